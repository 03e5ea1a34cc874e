"""docs/linux.md's system-call status table is the table the personality runs on."""
from conftest import ROOT


def test_docs_status_table_matches_the_code():
    from hypervisor.linux import table
    table.load_families()
    doc = (ROOT / "docs" / "linux.md").read_text()
    assert table.status_table() in doc, "regenerate the table: python -m hypervisor.linux.table"
