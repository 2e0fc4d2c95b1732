"""Prometheus's text exposition format, written directly: a scrape of thousands of VMs is tens of thousands of
lines, which prometheus-client's metric objects take seconds to build; plain string joins take milliseconds.
Label values are escaped as the format requires (backslash, double quote, newline)."""
from typing import Iterable


def escape(value: object) -> str:
    text = str(value)
    if "\\" in text or '"' in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def number(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    return repr(float(value))


def header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def family(name: str, kind: str, help_text: str, labels: tuple[str, ...],
           samples: Iterable[tuple[tuple, float | int | None]]) -> str:
    """One metric family: its header and a line per sample (label values in `labels` order). A counter's
    samples are named ``NAME_total``."""
    sample_name = f"{name}_total" if kind == "counter" else name
    lines = [header(name, kind, help_text)]
    for values, value in samples:
        if labels:
            rendered = ",".join(f'{label}="{escape(item)}"' for label, item in zip(labels, values))
            lines.append(f"{sample_name}{{{rendered}}} {number(value)}\n")
        else:
            lines.append(f"{sample_name} {number(value)}\n")
    return "".join(lines)
