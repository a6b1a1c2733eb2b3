"""Member uploads and PATCHes past the sandbox's request-rate quota get the 429 Amazon's definitions give."""

import pytest

from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import ThrottledError
from audience_pipeline.clients.dsp import DspClient, maid_patch

from ..sandbox.test_ads_quotas import MEMBERS_ROUTE, PATCH_ROUTE, set_quota
from .openapi import problems
from .test_ads_data_manager_contract import MANAGER, member
from .test_data_provider_contract import PROFILE_ID, create, maids


def test_throttled_uploads_and_patches_are_the_definitions_429(recorded, sandbox):
    adm, dsp = AdmClient(recorded.api, MANAGER), DspClient(recorded.api, PROFILE_ID)
    data_set_id, audience = adm.create_audience("Quota_Contract", "US").data_set_id, create(dsp)
    set_quota(sandbox, MEMBERS_ROUTE, 1)
    set_quota(sandbox, PATCH_ROUTE, 1)
    patch = [maid_patch("add", maids(1)[0], audience.id)]

    adm.upload_members(data_set_id, [member("u1")])
    dsp.patch_audiences(patch)
    # The client retries a 429 (without waiting, here) until its retries are spent.
    with pytest.raises(ThrottledError):
        adm.upload_members(data_set_id, [member("u2")])
    with pytest.raises(ThrottledError):
        dsp.patch_audiences(patch)

    throttled = {(e.method, e.status) for e in recorded.exchanges if e.status == 429}
    assert throttled == {("POST", 429), ("PATCH", 429)}
    assert problems(recorded.exchanges) == []
