"""The sink service (``nimbus sink``): accepts and discards test traffic, optionally with
scripted deferrals and bounces. Built in issue 5; nothing here yet."""
