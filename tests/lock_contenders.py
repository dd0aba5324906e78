"""Processes contending for one ModeldirLock, for tests/test_checkpoint.py (run as a script: it forks).

    python tests/lock_contenders.py together MODELDIR N   prints how many of N processes, released at
                                                          once, got the lock while all of them tried
    python tests/lock_contenders.py churn MODELDIR N      N processes take and release the lock 500 times
                                                          each; prints how many times two held it at once
"""
import os
import sys

from hw2.errors import ModeldirBusy
from hw2.modeldir import ModeldirLock


def fork(n, work):
    """Run work() in n child processes -> their pids. Each child exits with work()'s return value."""
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(work())
        pids.append(pid)
    return pids


def wait(pids):
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def read_exactly(fd, n):
    data = b""
    while len(data) < n:
        data += os.read(fd, n - len(data))
    return data


def together(modeldir, n):
    start, tried, done = os.pipe(), os.pipe(), os.pipe()

    def contend():
        os.read(start[0], 1)  # every process waits here until one write releases them all
        try:
            with ModeldirLock(modeldir):
                os.write(tried[1], b"1")
                os.read(done[0], 1)  # hold the lock until every process has tried
        except ModeldirBusy:
            os.write(tried[1], b"0")
        return 0

    pids = fork(n, contend)
    os.write(start[1], b"x" * n)
    outcomes = read_exactly(tried[0], n)
    os.write(done[1], b"x" * n)
    assert wait(pids) == [0] * n
    return outcomes.count(b"1")


def churn(modeldir, n):
    holder = os.path.join(modeldir, "holder")

    def contend():
        overlaps = 0
        for _ in range(500):
            try:
                with ModeldirLock(modeldir):
                    try:  # only one holder can create it
                        os.close(os.open(holder, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        overlaps += 1
                        continue
                    os.sched_yield()
                    os.unlink(holder)
            except ModeldirBusy:
                pass
        return min(overlaps, 1)

    return sum(wait(fork(n, contend)))


if __name__ == "__main__":
    mode, modeldir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print({"together": together, "churn": churn}[mode](modeldir, n))
