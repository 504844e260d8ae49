"""The queue engine both modes share: what a job is (``models``, ``states``), the rules of its
life (``lifecycle``), the pools configuration (``config``), durations, text hygiene and the
errors every verb may raise. Imports no Jupyter package, no store and no process code."""
