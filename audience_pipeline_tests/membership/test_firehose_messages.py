"""Firehose messages: the spec's format, the seed's forwarding settings, anonymous users."""

import json

import polars as pl
import pytest

from audience_pipeline.membership.firehose_messages import ForwardingRules, messages, user_identities

MEMBERS = pl.DataFrame(
    {
        "user_id": ["phileas", "anon", "nobody", "device"],
        "customer_id": ["p.fogg138", None, "  ", None],
        "email": ["phileas@travelers.com", None, None, None],
        "other": ["balloondude83", None, None, None],
        "other_3": ["balloongal89", None, None, None],
        "facebook_id": ["phileas83", None, None, None],
        "gaid": ["phileas83", None, None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"],
        "mpid": ["123", "456", None, None],
    }
)


DEFAULTS = ForwardingRules()


def identities(rules: ForwardingRules = DEFAULTS) -> list[dict | None]:
    return [json.loads(v) if v is not None else None for v in user_identities(MEMBERS, rules).to_list()]


def test_identities_use_the_firehose_keys_and_leave_out_absent_or_blank_values():
    phileas, anon, nobody, device = identities()
    assert phileas == {
        "GoogleAdvertisingIdentifier": "phileas83",
        "CustomerId": "p.fogg138",
        "Email": "phileas@travelers.com",
        "FacebookId": "phileas83",
        "MPID": "123",
        "Other": "balloondude83",
        "Other3": "balloongal89",
    }
    assert anon == {"MPID": "456"}
    assert nobody is None  # nothing forwardable: not sent, counted by the caller
    assert device == {"GoogleAdvertisingIdentifier": "6d92078a-8246-4ba4-ae5b-76104861e7dc"}


def test_forwarding_toggles_and_exclusions():
    rules = ForwardingRules(
        forward_email_addresses=False,
        forward_customer_ids=False,
        forward_google_advertising_ids=False,
        identities_to_exclude=("FacebookId", "other_3"),
    )
    phileas, _, _, device = identities(rules)
    assert phileas == {"MPID": "123", "Other": "balloondude83"}
    assert device is None


def test_anonymous_users_are_sent_only_when_the_setting_says_so():
    assert identities(ForwardingRules(send_anonymous_users=False))[1] is None
    # A user known by MPID and something else is not anonymous.
    assert identities(ForwardingRules(send_anonymous_users=False))[0]["MPID"] == "123"


def test_unknown_exclusions_name_the_setting():
    with pytest.raises(ValueError, match="identities_to_exclude: ShoeSize"):
        ForwardingRules(identities_to_exclude=("ShoeSize",))


@pytest.mark.parametrize(("audience_id", "expected"), [(123123, 123123), ("vip-list", "vip-list")])
def test_messages_are_json_lines_in_the_spec_format(audience_id, expected):
    changes = pl.DataFrame(
        {
            "message_id": ["id-1", "id-2"],
            "is_member": [True, False],
            "user_identities": user_identities(MEMBERS, ForwardingRules()).head(2),
        }
    )
    lines = messages(
        changes, audience_id=audience_id, audience_name='Low "Engagement"', changed_at=1234565788
    )
    assert all(line.endswith("}\n") and line.count("\n") == 1 for line in lines)
    added, removed = (json.loads(line) for line in lines)
    assert list(added) == [
        "MembershipChangedTimestamp",
        "AudienceId",
        "AudienceName",
        "IsMember",
        "MessageId",
        "UserIdentities",
    ]
    assert added["MembershipChangedTimestamp"] == "1234565788"
    assert added["AudienceId"] == expected
    assert added["AudienceName"] == 'Low "Engagement"'
    assert (added["IsMember"], removed["IsMember"]) == (True, False)
    assert (added["MessageId"], removed["MessageId"]) == ("id-1", "id-2")
    assert removed["UserIdentities"] == {"MPID": "456"}


def test_identity_values_with_quotes_and_nulls_in_text_survive_encoding():
    frame = pl.DataFrame({"customer_id": ['a","Email":null,"x'], "email": [None]})
    encoded = user_identities(frame, ForwardingRules())[0]
    assert json.loads(encoded) == {"CustomerId": 'a","Email":null,"x'}
