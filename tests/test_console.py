"""The per-round console table: aligned columns, '-' for what a round did not measure."""

from coordinator import console


def test_rows_align_with_the_header_and_show_what_was_measured():
    header = console.header().splitlines()[0]
    row = {
        "round": 3,
        "sites": [1, 2, 3],
        "train_loss": 0.25,
        "heldout_accuracy": 0.8125,
        "privacy": {"epsilon": 3.2104, "budget_epsilon": 8.0},
        "energy": {"total": {"kwh": 1.5e-4, "gco2e": 0.071}},
        "bytes_up": 1_232_896,
        "seconds": 9.5,
    }
    line = console.row_line(row)
    assert len(line) == len(header)
    cells = [c.strip() for c in line.split("|")]
    names = [c.strip() for c in header.split("|")]
    by_name = dict(zip(names, cells, strict=True))
    assert by_name["round"] == "3" and by_name["sites"] == "3"
    assert by_name["held-out acc"] == "0.812"
    assert by_name["eps/budget"] == "3.21/8"
    assert by_name["kWh"] == "1.50e-04"
    assert by_name["MB up"] == "1.23"
    assert by_name["site acc"] == "-" and by_name["MB down"] == "-"


def test_progress_bar_counts_rounds():
    assert console.progress(0, 4, width=8) == "[--------] 0/4"
    assert console.progress(2, 4, width=8) == "[####----] 2/4"
    assert console.row_line({"round": 4}, 4).endswith("[####################] 4/4")
