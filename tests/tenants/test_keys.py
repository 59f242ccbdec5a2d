from tenantq.tenants.access.keys import (
    CHECK_LEN,
    KID_LEN,
    SECRET_LEN,
    generate_key,
    hash_key,
    parse_key,
    verify_hash,
)


class TestKeyFormat:
    def test_generated_key_parses_and_has_expected_shape(self):
        full, kid, prefix = generate_key("live")
        assert prefix == "tq_live_" and full.startswith("tq_live_")
        assert len(full) == len(prefix) + KID_LEN + 1 + SECRET_LEN + CHECK_LEN
        parsed = parse_key(full)
        assert parsed is not None and parsed.kid == kid

    def test_test_environment_prefix(self):
        full, _, prefix = generate_key("test")
        assert prefix == "tq_test_" and parse_key(full) is not None

    def test_single_typo_is_rejected_by_checksum(self):
        full, _, _ = generate_key()
        i = len(full) - CHECK_LEN - 3
        typo = full[:i] + ("a" if full[i] != "a" else "b") + full[i + 1 :]
        assert parse_key(typo) is None

    def test_garbage_is_rejected(self):
        for raw in ["", "tq_live_", "Bearer x", "tq_live_" + "a" * 51, "sk_live_abc", "tq_live_" + "é" * 51]:
            assert parse_key(raw) is None

    def test_keys_are_unique(self):
        assert len({generate_key()[0] for _ in range(200)}) == 200

    def test_hash_is_keyed_by_server_secret(self):
        full, _, _ = generate_key()
        h = hash_key(full, "s1")
        assert verify_hash(full, h, "s1")
        assert not verify_hash(full, h, "s2")
        assert full not in h
