"""The local cluster runner: ``nimbus cluster up`` runs the Helm chart as local processes.

Modules:
    chart    render the chart with the real Helm engine
    render   rendered manifests -> process specs (pure)
    rewrite  address and path rewriting (pure)
    plan     the spec records
    local    run and stop the processes, readiness from the probes
    command  the ``nimbus cluster`` CLI
"""
