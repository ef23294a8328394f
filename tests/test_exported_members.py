import tenantkit


def test_all_is_complete_and_sorted() -> None:
    public = {
        name for name, value in vars(tenantkit).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("tenantkit")
    }
    assert set(tenantkit.__all__) == public
    assert list(tenantkit.__all__) == sorted(tenantkit.__all__)
