"""``percorso user``: dashboard users and their roles."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from percorso.cli.shared import DataDir, Format, OutputFormat, console, emit, fail, opened, settings_for

# The dashboard's user functions are imported by each command: importing the dashboard loads its
# pages and their analytics (scipy, statsmodels), a second on every start of the command line.
ROLES_HELP = (
    "viewer (reads every page), editor (also edits automations and surveys, saves segments and map notes) "
    "or admin (also users, API keys, contact export and erasure)"
)

user_app = typer.Typer(
    help="Dashboard users: add, list, change role or password, remove.", no_args_is_help=True
)

Role = Annotated[str, typer.Option("--role", help=ROLES_HELP)]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    email: str,
    role: Role = "viewer",
    name: Annotated[str, typer.Option("--name", help="Shown in the dashboard")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a dashboard user (asks for the password unless --password-stdin)."""
    from percorso.web.dashboard.users import UserError, add_user

    password = _password(password_stdin)
    with opened(settings_for(data_dir)) as store:
        try:
            user = add_user(store, email, password, role=role, name=name)
        except UserError as exc:
            raise fail(str(exc)) from None
    console.print(f"added {user.email} ({user.role}); sign in at /login")


@user_app.command("list")
def user_list(data_dir: DataDir = None, fmt: Format = OutputFormat.table) -> None:
    """List dashboard users."""
    from percorso.web.dashboard.users import list_users

    with opened(settings_for(data_dir)) as store:
        rows = list_users(store)
    emit(
        [
            {
                **r,
                "created_at": str(r["created_at"]),
                "disabled_at": r["disabled_at"] and str(r["disabled_at"]),
            }
            for r in rows
        ],
        fmt,
        "Users",
    )


@user_app.command("role")
def user_role(
    email: str,
    role: Annotated[str, typer.Argument(help=ROLES_HELP)],
    data_dir: DataDir = None,
) -> None:
    """Change a user's role."""
    from percorso.web.dashboard.users import UserError, set_role

    with opened(settings_for(data_dir)) as store:
        try:
            set_role(store, email, role)
        except UserError as exc:
            raise fail(str(exc)) from None
    console.print(f"{email} is now {role}")


@user_app.command("password")
def user_password(
    email: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read it from stdin")] = False,
    data_dir: DataDir = None,
) -> None:
    """Set a new password (signs the user out everywhere)."""
    from percorso.web.dashboard.users import UserError, set_password

    password = _password(password_stdin)
    with opened(settings_for(data_dir)) as store:
        try:
            set_password(store, email, password)
        except UserError as exc:
            raise fail(str(exc)) from None
    console.print(f"password changed for {email}")


@user_app.command("remove")
def user_remove(email: str, data_dir: DataDir = None) -> None:
    """Remove a user and end their sessions."""
    from percorso.web.dashboard.users import remove_user

    with opened(settings_for(data_dir)) as store:
        if not remove_user(store, email):
            raise fail(f"no user {email}; see `percorso user list`")
    console.print(f"removed {email}")
