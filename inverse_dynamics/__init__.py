"""Inverse dynamics: two consecutive frames -> the action between them."""
