# Quick start: `make demo` runs the main job, `make test` runs every test.
# Both set the environment up first if needed (scripts/setup.sh, idempotent).

VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lab notebooks clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/michi-lite demo

test: setup
	$(BIN)/pytest tests
	MICHI_LITE_PRESET=tiny $(BIN)/pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

lab: setup
	$(BIN)/jupyter lab notebooks

# Re-pair the notebooks after editing their jupytext .py sources.
notebooks: setup
	$(BIN)/jupytext --sync notebooks/*.py

clean:
	rm -rf demo_out .pytest_cache
