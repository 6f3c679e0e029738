"""Alerts ("Vigil events"): the rules run per GEX version (vigil.py) and delivered by webhook (courier.py)."""
