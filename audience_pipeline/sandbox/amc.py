"""Amazon Marketing Cloud advertiser data upload: datasets, uploads (ingested from S3), user deletion."""

from flask import Blueprint

blueprint = Blueprint("amc", __name__)
