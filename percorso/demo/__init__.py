"""The demo dataset: six months of a fictional Italian retailer's customers."""
