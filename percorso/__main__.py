from percorso.cli import app

app()
