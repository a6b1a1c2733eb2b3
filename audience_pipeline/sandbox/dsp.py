"""Amazon DSP Data Provider API: audience metadata and PATCH /v2/dp/audience for mobile ad IDs."""

from flask import Blueprint

blueprint = Blueprint("dsp", __name__)
