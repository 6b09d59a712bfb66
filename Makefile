# Full-length jobs and the test suite.
#   make results            every config in configs/, one after another, then the README's table
#   make results-NAME       one config (configs/NAME.yaml) into runs/results/NAME
#   make report             the table again: each run in runs/results/ replaces its row of
#                           benchmarks/results/jobs.json, the other rows stay as measured
#   make test               the README's test command
# The jobs run one at a time: each local cluster already uses every core of a small machine.

PYTHON   ?= python
DOWNPOUR ?= downpour
CONFIGS  := $(sort $(basename $(notdir $(wildcard configs/*.yaml))))

.PHONY: results report test $(CONFIGS:%=results-%)

results: $(CONFIGS:%=results-%)
	$(PYTHON) benchmarks/jobs_report.py

report:
	$(PYTHON) benchmarks/jobs_report.py

# A fresh run directory each time, so metrics.jsonl never mixes two runs.
$(CONFIGS:%=results-%): results-%:
	rm -rf runs/results/$*
	$(DOWNPOUR) launch configs/$*.yaml --run-dir runs/results/$* --quiet

test:
	$(PYTHON) -m pytest -q
