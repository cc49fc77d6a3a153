# make demo: a few minutes on a laptop CPU, no dataset or CVNet weights needed (docs/demo.md).
PYTHON ?= python
DEMO_DATA ?= demo/data
DEMO_OUT ?= demo/output
DEMO_SEED ?= 0

.PHONY: demo demo-install demo-clean

demo: demo-install $(DEMO_DATA)/demo/gnd_demo.pkl
	$(PYTHON) demo/run_demo.py --data-dir $(DEMO_DATA) --out-dir $(DEMO_OUT)

demo-install:
	$(PYTHON) -m pip install -q -r requirements-demo.txt

$(DEMO_DATA)/demo/gnd_demo.pkl: demo/make_benchmark.py
	$(PYTHON) demo/make_benchmark.py --root $(DEMO_DATA) --name demo --seed $(DEMO_SEED)

demo-clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT)
