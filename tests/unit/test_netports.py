from pathlib import Path

from encom.api.netports import merged, overlap_with_ephemeral, reserve_ports


def test_merged_adds_a_range_once() -> None:
    assert merged("", 55000, 55999) == "55000-55999"
    assert merged("8080,9000-9100\n", 55000, 55999) == "8080,9000-9100,55000-55999"
    assert merged("55000-55999", 55000, 55999) == "55000-55999"


def test_only_the_ephemeral_part_is_reserved() -> None:
    assert overlap_with_ephemeral(55000, 55999, "32768\t60999\n") == (55000, 55999)
    assert overlap_with_ephemeral(60000, 61999, "32768\t60999\n") == (60000, 60999)
    assert overlap_with_ephemeral(3000, 3500, "32768\t60999\n") is None


def test_reserve_ports_writes_the_setting(tmp_path: Path) -> None:
    setting, ephemeral = tmp_path / "ip_local_reserved_ports", tmp_path / "ip_local_port_range"
    setting.write_text("8080\n")
    ephemeral.write_text("32768\t60999\n")
    assert reserve_ports(55000, 55999, setting, ephemeral)
    assert setting.read_text() == "8080,55000-55999"
    assert reserve_ports(3000, 3500, setting, ephemeral)
    assert setting.read_text() == "8080,55000-55999"
    assert not reserve_ports(55000, 55999, tmp_path / "missing" / "file", ephemeral)
