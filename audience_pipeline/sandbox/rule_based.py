"""AMC rule-based audiences: SQL over uploaded datasets in DuckDB, followed to SUCCEEDED or FAILED."""

from flask import Blueprint

blueprint = Blueprint("rule_based", __name__)
