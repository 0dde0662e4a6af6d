"""Before a verb records flow runs: the Prefect server PREFECT_API_URL names answers, or one line.

Without this check, `mage-dbt run` against a server that is down ends in Prefect's long
connection traceback. The URL is shown without any user:password part.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from mage_dbt.errors import ConfigError

HINT = ("start that server (`mage-dbt server`, or `prefect server start`), or unset PREFECT_API_URL to let "
        "mage-dbt start its own local server")


def shown_url(url: str) -> str:
    """`url` without credentials."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_configured_server() -> None:
    """ConfigError naming the URL when PREFECT_API_URL is set and its server does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        reason = " ".join(str(problem).split())[:160] or type(problem).__name__
        raise ConfigError(f"the Prefect server at {shown_url(url)} (PREFECT_API_URL) does not answer: {reason}",
                          hint=HINT)
