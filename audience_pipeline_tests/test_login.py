"""`audience-pipeline login` end to end: the command in its own process, the test as the browser, the
sandbox as Login with Amazon and the Amazon Ads API, all over real HTTP."""

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests
from click.testing import CliRunner

from audience_pipeline.cli import main
from audience_pipeline.cli.env_file import read_env_file, set_env_value
from audience_pipeline.clients.ads_api import AdsApiClient, AuthenticationError
from audience_pipeline.sandbox.auth import USER
from audience_pipeline.sandbox.profiles import PROFILES

REDIRECT_URI = "http://127.0.0.1:9/callback"


class _ConsentForm(HTMLParser):
    """The action and hidden fields of the consent page's form."""

    def __init__(self):
        super().__init__()
        self.action, self.fields = "", {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs["action"]
        elif tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs["value"]


def allow(consent_url: str) -> str:
    """Act as the user's browser on the consent page: open it, press "Allow"; Amazon's redirect."""
    page = requests.get(consent_url, timeout=10)
    assert page.status_code == 200, page.text
    form = _ConsentForm()
    form.feed(page.text)
    allowed = requests.post(
        urljoin(consent_url, form.action), data=form.fields, allow_redirects=False, timeout=10
    )
    assert allowed.status_code == 302, allowed.text
    return allowed.headers["Location"]


@dataclass
class Login:
    """A running `audience-pipeline login` and the consent address it printed."""

    process: subprocess.Popen
    consent_url: str

    @property
    def state(self) -> str:
        return parse_qs(urlsplit(self.consent_url).query)["state"][0]

    @property
    def redirect_uri(self) -> str:
        return parse_qs(urlsplit(self.consent_url).query)["redirect_uri"][0]

    def finish(self) -> tuple[int, str, str]:
        """Exit code, stdout and stderr, once the command ends."""
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


def start_login(env_file: Path) -> Login:
    """`audience-pipeline login` on a free port, without a browser, as far as printing the consent URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "audience_pipeline.cli", "login", "--port", "0", "--no-browser"]
        + ["--env-file", str(env_file), "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    while True:
        line = process.stdout.readline()
        if not line:
            process.kill()
            pytest.fail(f"login exited before printing the consent URL: {process.communicate()[1]}")
        if "/ap/oa?" in line:
            return Login(process, line.strip())


def sandbox_code(sandbox, client_id: str = "sandbox-client", redirect_uri: str = REDIRECT_URI) -> str:
    """An authorization code from the sandbox's consent page, for `client_id` and `redirect_uri`."""
    query = {"client_id": client_id, "scope": "advertising::campaign_management", "response_type": "code"}
    location = allow(f"{sandbox.auth_url}?{urlencode({**query, 'redirect_uri': redirect_uri})}")
    return parse_qs(urlsplit(location).query)["code"][0]


def sandbox_client(sandbox, refresh_token: str = "") -> AdsApiClient:
    return AdsApiClient(
        "sandbox-client",
        "sandbox-secret",
        refresh_token,
        base_url=sandbox.ads_url,
        token_url=sandbox.token_url,
    )


def test_login_saves_a_refresh_token_and_lists_profiles_manager_accounts_and_amc_instances(
    sandbox_env, tmp_path, monkeypatch
):
    monkeypatch.delenv("AMAZON_ADS_CLIENT_SECRET")  # so the env file's is used
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# local settings\nAUDIENCE_PIPELINE_STATE=.audience_state\nAMAZON_ADS_CLIENT_SECRET=file-secret\n"
        "AMAZON_ADS_REFRESH_TOKEN=old-token\n"
    )
    login = start_login(env_file)
    assert login.redirect_uri.startswith("http://127.0.0.1:") and login.redirect_uri.endswith("/callback")
    # The Amazon Ads API, and who the user is (DSP `profile_name`).
    assert "scope=advertising%3A%3Acampaign_management%20profile&" in login.consent_url

    location = allow(login.consent_url)
    callback = requests.get(location, timeout=10)
    code, out, err = login.finish()

    assert code == 0, err
    assert callback.status_code == 200 and "close this tab" in callback.text
    assert location.startswith(login.redirect_uri) and parse_qs(urlsplit(location).query)["state"] == [
        login.state
    ]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    token = read_env_file(env_file)["AMAZON_ADS_REFRESH_TOKEN"]
    assert token.startswith("Atzr|")
    assert lines == [
        "# local settings",
        "AUDIENCE_PIPELINE_STATE=.audience_state",
        "AMAZON_ADS_CLIENT_SECRET=file-secret",
        f"AMAZON_ADS_REFRESH_TOKEN={token}",
    ]
    assert token not in out + err and "file-secret" not in out + err
    assert f"Saved AMAZON_ADS_REFRESH_TOKEN to {env_file}" in out
    assert "Amazon user (DSP `profile_name`):\n  NAME\n  Sandbox User\n" in out
    assert USER["email"] not in out + err and USER["user_id"] not in out + err
    for profile in PROFILES:
        assert str(profile["profileId"]) in out and profile["accountInfo"]["name"] in out
    assert "amzn1.ads-account.sandbox" in out
    assert "amcsandbox01" in out and "ENTITY1SANDBOX" in out
    api = AdsApiClient(
        "dummy", "file-secret", token, base_url=sandbox_env.ads_url, token_url=sandbox_env.token_url
    )
    assert api.access_token().startswith("Atza|")
    assert api.request("GET", "/v2/profiles")


def test_an_answer_with_another_state_fails_the_login(sandbox_env, tmp_path):
    env_file = tmp_path / ".env"
    login = start_login(env_file)

    callback = requests.get(f"{login.redirect_uri}?code=stolen&state=not-this-login", timeout=10)
    code, out, err = login.finish()

    assert callback.status_code == 400
    assert code != 0 and "state" in err
    assert not env_file.exists()


def test_the_user_denying_access_fails_the_login_clearly(sandbox_env, tmp_path):
    env_file = tmp_path / ".env"
    login = start_login(env_file)
    denied = {
        "error": "access_denied",
        "error_description": "The user denied the request",
        "state": login.state,
    }

    callback = requests.get(f"{login.redirect_uri}?{urlencode(denied)}", timeout=10)
    code, out, err = login.finish()

    assert callback.status_code == 400
    assert code != 0 and "did not grant access (access_denied): The user denied the request" in err
    assert not env_file.exists()


def test_an_expired_code_fails_the_login_with_amazons_words(sandbox_env, tmp_path, monkeypatch):
    monkeypatch.setattr(
        sandbox_env.ads, "config", sandbox_env.ads.config.model_copy(update={"auth_code_ttl_seconds": 0})
    )
    env_file = tmp_path / ".env"
    login = start_login(env_file)

    requests.get(allow(login.consent_url), timeout=10)
    code, out, err = login.finish()

    assert code != 0 and "The request has an invalid parameter : code" in err
    assert not env_file.exists()


def test_a_code_works_once(sandbox):
    code = sandbox_code(sandbox)
    first = sandbox_client(sandbox)
    refresh_token = first.authorize(code, REDIRECT_URI)

    with pytest.raises(AuthenticationError) as again:
        sandbox_client(sandbox).authorize(code, REDIRECT_URI)

    assert refresh_token.startswith("Atzr|") and first.access_token().startswith("Atza|")
    assert again.value.status == 400
    assert again.value.body == {
        "error": "invalid_grant",
        "error_description": "The request has an invalid parameter : code",
    }
    assert sandbox_client(sandbox, refresh_token).request("GET", "/v2/profiles")


def test_an_expired_code_is_invalid_grant(sandbox, monkeypatch):
    monkeypatch.setattr(
        sandbox.ads, "config", sandbox.ads.config.model_copy(update={"auth_code_ttl_seconds": 0})
    )
    code = sandbox_code(sandbox)

    with pytest.raises(AuthenticationError) as expired:
        sandbox_client(sandbox).authorize(code, REDIRECT_URI)

    assert expired.value.body["error"] == "invalid_grant"
    assert expired.value.body["error_description"] == "The request has an invalid parameter : code"


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "wrong"),
    [
        ("another-client", REDIRECT_URI, "client_id"),
        ("sandbox-client", "http://127.0.0.1:9/other", "redirect_uri"),
    ],
)
def test_a_code_is_bound_to_its_app_and_redirect_uri(sandbox, client_id, redirect_uri, wrong):
    code = sandbox_code(sandbox, client_id=client_id, redirect_uri=redirect_uri)

    with pytest.raises(AuthenticationError) as refused:
        sandbox_client(sandbox).authorize(code, REDIRECT_URI)

    assert refused.value.body == {
        "error": "invalid_grant",
        "error_description": f"The request has an invalid parameter : {wrong}",
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"client_id": ""}, "client_id is required"),
        ({"response_type": "token"}, "response_type must be code"),
        ({"redirect_uri": "/callback"}, "redirect_uri must be an absolute http(s) URL"),
        (
            {"scope": "profile"},
            "scope must include advertising::audiences or advertising::campaign_management",
        ),
        (
            {"scope": "advertising::audiences profile advertising::everything"},
            "An unknown scope was requested: advertising::everything",
        ),
    ],
)
def test_the_consent_page_refuses_bad_authorization_requests(sandbox, change, problem):
    query = {
        "client_id": "sandbox-client",
        "scope": "advertising::audiences",
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        **change,
    }
    url = sandbox.auth_url

    page = requests.get(url, params=query, timeout=10)
    allowed = requests.post(url, data=query, allow_redirects=False, timeout=10)

    assert page.status_code == allowed.status_code == 400
    assert problem in page.text and problem in allowed.text


def test_allow_redirects_with_the_code_scope_and_state(sandbox):
    query = {
        "client_id": "sandbox-client",
        "scope": "advertising::campaign_management",
        "response_type": "code",
        "redirect_uri": "https://example.com/back?from=login",
        "state": "xyz",
    }

    location = allow(f"{sandbox.auth_url}?{urlencode(query)}")

    answer = parse_qs(urlsplit(location).query)
    assert location.startswith("https://example.com/back?from=login&")
    assert answer["state"] == ["xyz"] and answer["scope"] == ["advertising::campaign_management"]
    assert answer["code"][0]


def test_a_missing_client_id_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("AMAZON_ADS_CLIENT_ID", raising=False)
    monkeypatch.setenv("AMAZON_ADS_CLIENT_SECRET", "secret")

    result = CliRunner().invoke(main, ["login", "--no-browser", "--env-file", str(tmp_path / ".env")])

    assert result.exit_code != 0
    assert "AMAZON_ADS_CLIENT_ID is not set" in result.output


def test_no_answer_from_the_browser_times_out(sandbox_env, tmp_path):
    result = CliRunner().invoke(
        main, ["login", "--no-browser", "--port", "0", "--timeout", "1", "--env-file", str(tmp_path / ".env")]
    )

    assert result.exit_code != 0
    assert "No answer from the browser within 1 s" in result.output
    assert "/ap/oa?" in result.output


def test_set_env_value_creates_a_private_file_and_replaces_only_its_variable(tmp_path):
    env_file = tmp_path / ".env"
    set_env_value(env_file, "A", "1")
    assert env_file.read_text() == "A=1\n" and stat.S_IMODE(env_file.stat().st_mode) == 0o600

    env_file.write_text("# A=commented\nexport A='old'\nB=\"two words\"  \nC=3 # note\n")
    env_file.chmod(0o644)
    set_env_value(env_file, "A", "new")

    assert env_file.read_text() == '# A=commented\nA=new\nB="two words"  \nC=3 # note\n'
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert read_env_file(env_file) == {"A": "new", "B": "two words", "C": "3"}
