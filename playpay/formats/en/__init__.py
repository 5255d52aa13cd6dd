"""English formats (playpay/formats/en/formats.py)."""
