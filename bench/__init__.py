"""Nimbus benchmarks: relay throughput against Postfix, and spool/memory micro-benchmarks.

Run from the repository root (see BENCHMARKS.md and bench/README.md):

    python3 -m bench.run_bench [--messages N --runs R --sizes 4096,40960 --dkim ...]
    python3 -m bench.spool_bench
    python3 -m bench.memory_bench
    python3 -m bench.soak [--minutes 30 --interval 60 --phase 60 --write BENCHMARKS.md]

Modules, one concept each:
    run_bench      the command line: options, preflight, the interleaved runs, the summary
    trial          one trial: sink + MTA + load, the measured window, cross-checks
    harness        MtaHarness, the one interface of an MTA under test, and its Placement
    postfix        PostfixHarness: a throwaway Postfix instance; its maillog
    nimbus         NimbusHarness and NimbusDkimHarness: ``nimbus mta`` in sink mode
    nimbus_policy  the bench policy (bundled minus the default rate limits) and its DKIM key
    nimbus_output  pure readers of nimbus's diagnostics, mail log and /metrics
    sink           smtp-sink and its live ``-c`` counter
    load           smtp-source, the load generator
    sampling       CPU and memory of processes and of the box (psutil)
    machine        facts about the machine and the versions under test
    stats          medians, ratios and problems (pure)
    report         the console table and the BENCHMARKS.md sections (pure, plus one write)
    support        process and port plumbing shared by all of them
    spool_bench    what a durable spool save costs, alone and with group commit
    memory_bench   RAM per queued message
    soak           N minutes of SMTP + HTTP traffic with receiver faults; RSS, fds, tasks, spool
    soak_report    the soak's flatness rule, message ledger and BENCHMARKS.md section (pure)
"""
