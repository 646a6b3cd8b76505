"""Importing the privacy package must not make every Flower log line print twice."""

import logging

import privacy.dp_sgd  # noqa: F401  (the import under test: it pulls in Opacus)


def test_no_root_handler_left_by_opacus():
    # Opacus' basicConfig handler is recognisable by its date format.
    leaked = [
        h
        for h in logging.getLogger().handlers
        if h.formatter is not None and h.formatter.datefmt == "%m/%d/%Y %H:%M:%S"
    ]
    assert leaked == []
