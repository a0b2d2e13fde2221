#!/usr/bin/env python3
"""Parses a /metrics document (file argument) with the official Prometheus Python client,
with both its Prometheus text-format parser and its strict OpenMetrics parser, and prints
the families as JSON: {name: {"type": ..., "samples": [[name, labels, value], ...]}}.
Exits non-zero (with the parser's error) when either parser refuses the document."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus


def main():
    text = open(sys.argv[1]).read()
    # The Prometheus text parser does not know `# EOF`; everything before it is the same.
    list(prometheus(text.replace("# EOF\n", "")))
    out = {}
    for family in openmetrics(text):
        if family.name in out:
            raise SystemExit(f"family {family.name} appears twice")
        out[family.name] = {
            "type": family.type,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
