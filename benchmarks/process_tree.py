"""The live processes below a process, read from /proc (Linux): what the benchmarks count as a
pipeline's worker processes (their CPU time, their memory)."""

import os


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """Every live process below `pid` (children, grandchildren, ...), each with its `/proc/<pid>/stat`
    fields after the command name: `fields[1]` is the parent, `fields[11:15]` utime, stime, cutime and
    cstime in clock ticks."""
    children: dict[int, list[tuple[int, list[str]]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), fields))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child[0])
    return found
