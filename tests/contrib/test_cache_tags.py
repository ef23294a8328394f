"""tenantkit_send_tags() in contrib/tenantkit-events.php: the header the PHP apps tag pages with."""

from __future__ import annotations

from .phpcli import PhpCall


def test_send_tags_keeps_tags_drops_junk_and_falls_back_to_site(php_call: PhpCall) -> None:
    result = php_call(["tenantkit-events.php"], [
        ("tenantkit_send_tags", [["post:1", "home", "post:1", "bad tag", 3, "term:x"]]),
        ("tenantkit_send_tags", [[]]),
        ("tenantkit_send_tags", [[f"post:{n}" for n in range(1000)]]),
    ])
    # php-cli has sent no output: header() works, and the tags sent come back.
    assert result.results == [["post:1", "home"], ["site"], ["site"]]
