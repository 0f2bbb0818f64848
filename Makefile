# darknet-parity: the two set-up commands are `make parity` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEBIAN_LIB := /usr/lib/darknet/libdarknet.so
STAMP := .make/installed

.PHONY: install build darknet-lib test parity bench bench-search search-proof fixtures fuzz fuzz-long sanitize clean

# Install the package (editable) with its test extras; torch is pinned in pyproject.
$(STAMP): pyproject.toml
	$(PIP) install -q -e '.[test]'
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

# Compile the C reference now (otherwise it compiles on first use).
build: install
	$(PYTHON) -m parity.backends.c_reference

# Debian's real darknet (pjreddie 2018) as a second reference; best effort.
darknet-lib:
	@if [ -f $(DEBIAN_LIB) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends darknet) >/dev/null \
	  || echo "note: could not install Debian's darknet package; libdarknet checks will be skipped"; \
	else echo "note: $(DEBIAN_LIB) missing (apt-get install darknet); libdarknet checks will be skipped"; fi

# PYTEST_ARGS: extra pytest arguments (.ci/run leaves out what make sanitize runs anyway).
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): the tests are single-threaded, so on 2 cores this halves the wall time.
TEST_WORKERS ?= 2
test: build darknet-lib
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The default suite: the C reference against real darknet (recordings, Debian's
# library), then the PyTorch port against the reference over every profile,
# fixtures/ and the recorded dev set.
parity: build darknet-lib
	$(PYTHON) -m parity.cli verify-reference
	$(PYTHON) -m parity.cli run --jobs 2 --require-coverage --html out/parity.html --junit out/parity.xml

# Regenerate the committed recordings of a real darknet training run (Debian's library).
fixtures: build darknet-lib
	$(PYTHON) tools/make_fixtures.py

# A long random campaign: every one of the agreement test's 2,000 random cases, then the C reference
# vs the PyTorch port on 10,000+ cases (not a test).
fuzz: build
	PARITY_FULL_AGREEMENT=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_torch_agreement.py -k random
	$(PYTHON) tools/fuzz.py

# The long campaign (not in CI): 100,000 cases over every core; its figures go in the README.
FUZZ_JOBS ?= $(shell $(PYTHON) -c "from parity.pool import max_jobs; print(max_jobs()[0])" 2>/dev/null || echo 2)
fuzz-long: build
	$(PYTHON) tools/fuzz.py --cases 100000 --jobs $(FUZZ_JOBS) --json out/fuzz-long.json

# The C reference and the libdarknet shim under AddressSanitizer and UBSan.
sanitize: install darknet-lib
	tools/sanitize.sh

clean:
	rm -rf .make build *.egg-info .pytest_cache

# Speed of the C reference and the PyTorch port on YOLOv4 608 (not a test), side by side with
# AGAINST (a commit, or none) in the same run; the figures go to benchmarks/baseline.json.
AGAINST ?= HEAD~1
bench: build
	$(PYTHON) benchmarks/bench_yolov4.py --against $(AGAINST) --json benchmarks/baseline.json
	$(PYTHON) benchmarks/bench_search.py

# The explanation search's cost against the plain run it explains (120 cases, 5 deviations; goal <= 3x).
bench-search: build
	$(PYTHON) benchmarks/bench_search.py

# The explanation search on 200 random combinations of catalogue switches (exact set >= 98%, no false names).
search-proof: build
	$(PYTHON) tools/search_proof.py --count 200 --json out/search-proof.json
