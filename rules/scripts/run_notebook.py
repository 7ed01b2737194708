"""Execute one report notebook with the workflow's paths injected: executed copy plus HTML.
(Not named notebook.py: nbconvert imports a module of that name.)"""
from _job import start

start(snakemake, uses_torch=False)

from pathlib import Path

from diffinv.workflow.notebooks import execute_notebook, provenance_line

# The commit is read when the job runs, not planned: a new commit alone reruns nothing, and every
# caption and figure footer says which code made it.
parameters = dict(snakemake.params.parameters)
parameters["label"] = f"{parameters['label']}; {provenance_line(Path(snakemake.scriptdir).parents[1])}"
execute_notebook(snakemake.input.notebook, snakemake.output.executed, snakemake.output.html, parameters=parameters)
