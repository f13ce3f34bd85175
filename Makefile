# Quick start: `make demo` runs the main job, `make test` runs every test.
# Both set the environment up first if needed (scripts/setup.sh, idempotent).

VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lab notebooks clean

# Notebooks are executed for their stored outputs and re-executed by `make test` in the same
# environment, so that pytest --nbval can compare the two: no text progress bars (they show timings;
# a notebook's own are widgets, stored as their first state).
NOTEBOOK_ENV := TQDM_DISABLE=1

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/michi-lite demo

test: setup
	$(BIN)/pytest tests
	$(NOTEBOOK_ENV) $(BIN)/pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
		-p no:cacheprovider notebooks

lab: setup
	$(BIN)/jupyter lab notebooks

# After editing a notebook's jupytext .py source: re-pair it and re-run it, so
# the committed .ipynb shows real outputs (without per-run execution metadata).
# The notebooks run in this environment's own kernel (python3), whatever kernel their metadata names.
CLEAR := --ExecutePreprocessor.kernel_name=python3 --ClearMetadataPreprocessor.enabled=True \
	--ClearMetadataPreprocessor.preserve_cell_metadata_mask=tags \
	$(foreach key,kernelspec jupytext language_info,--ClearMetadataPreprocessor.preserve_nb_metadata_mask=$(key))

notebooks: setup
	$(BIN)/jupytext --sync notebooks/*.py
	$(NOTEBOOK_ENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace $(CLEAR) notebooks/*.ipynb

clean:
	rm -rf demo_out .pytest_cache
