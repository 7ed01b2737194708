"""Execute one report notebook with the workflow's paths injected: executed copy plus HTML.
(Not named notebook.py: nbconvert imports a module of that name.)"""
from _job import start

start(snakemake, uses_torch=False)

from diffinv.report import execute_notebook

execute_notebook(snakemake.input.notebook, snakemake.output.executed, snakemake.output.html,
                 parameters=dict(snakemake.params.parameters))
