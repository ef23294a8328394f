import inspect

import pytest

from tenantkit import errors


def test_every_error_derives_from_the_root() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception)]
    assert len(classes) >= 8
    assert all(issubclass(c, errors.TenantkitError) for c in classes)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_drawn_in_the_module_docstring(name: str) -> None:
    assert name in (errors.__doc__ or "")


def test_invalid_host_is_also_a_value_error() -> None:
    assert issubclass(errors.InvalidHost, ValueError)
    assert issubclass(errors.SiteFileError, errors.SiteError)
    assert issubclass(errors.PrimaryUnavailable, errors.DatabaseError)
