"""Amazon Ads Data Manager: audiences, members (CREATE/DELETE), metrics, identity deletion."""

from flask import Blueprint

blueprint = Blueprint("adm", __name__)
