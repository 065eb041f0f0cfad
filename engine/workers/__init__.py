"""One node, one engine process per core: the supervisor and what the workers share.

Modules:
    cpu.py         how many workers by default: the cgroup CPU quota, else the CPU count
    role.py        ``WorkerRole``: which worker this process is (index, count, runtime dir)
    supervisor.py  ``nimbus mta --workers N``: start, restart, signal and drain the workers;
                   serves the node's shared throttle store
    merge.py       pure: one answer for the node from every worker's admin answer
    fanout.py      the middleware that sends admin requests and /metrics to every worker
"""
