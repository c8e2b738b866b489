"""Schemathesis hooks: while the broker is stopped, 503 with Retry-After is
the documented answer; any other 5xx is a failure."""
import schemathesis


@schemathesis.check
def no_5xx_but_503(ctx, response, case):
    if response.status_code >= 500:
        if response.status_code != 503:
            raise AssertionError(f"server error {response.status_code}")
        if "retry-after" not in {k.lower() for k in response.headers}:
            raise AssertionError("503 without Retry-After")
