# smartkv -- attention-guided mixed-precision KV-cache compression toolkit.
#
# Knobs (override on the command line):
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
LIBDIR    ?= $(PREFIX)/lib
INCDIR    ?= $(PREFIX)/include
MANDIR    ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR   ?=
CC        ?= cc
CFLAGS    ?= -O2 -g
WERROR    ?= $(if $(CI),1,0)
SANITIZE  ?= 0
CUDA      ?= auto
NVCC      ?= nvcc
V         ?= 0

VERSION := 0.1.0
SOVERSION := 0

ifeq ($(V),0)
Q := @
say = @printf '  %-6s %s\n' $(1) $(2);
else
Q :=
say =
endif

WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN += -Werror
endif
SANFLAGS :=
SANDEFS :=
ifeq ($(SANITIZE),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# one copy of the int8 attention kernels per instruction set, widths and
# head counts at run time (lib/attend/attend_i8.h): the same source, 15x less
# time to compile under the sanitizers
SANDEFS := -DSKV_FEW_KERNELS
endif

# lib/ is grouped by layer (common, format, quant, alloc, attend, model, eval);
# every layer folder is on the include path, public headers are lib/*/smartkv*.h.
LIB_DIRS := $(sort $(dir $(wildcard lib/*/*.c lib/*/*.h)))
LIB_INC := -Ilib $(patsubst %/,-I%,$(LIB_DIRS))
ALL_CFLAGS := -std=gnu11 $(WARN) $(CFLAGS) $(SANFLAGS) $(SANDEFS) -fPIC -pthread -fvisibility=hidden $(LIB_INC)
ALL_LDFLAGS := $(LDFLAGS) $(SANFLAGS) -pthread
LIBS := -lz -lm -ldl -llapacke

# Sanitized objects live apart so switching SANITIZE never mixes builds.
ifeq ($(SANITIZE),1)
O := build/san
else
O := build/opt
endif

# --- CUDA: built when nvcc is found (CUDA=0 skips, CUDA=1 requires) ---
HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1)
ifeq ($(CUDA),1)
ifneq ($(HAVE_NVCC),1)
$(error CUDA=1 but $(NVCC) was not found)
endif
USE_CUDA := 1
else ifeq ($(CUDA),0)
USE_CUDA := 0
else
USE_CUDA := $(if $(HAVE_NVCC),1,0)
endif
CU_SRCS := $(wildcard kernels/*.cu)
ifeq ($(CU_SRCS),)
USE_CUDA := 0
endif

LIB_SRCS := $(wildcard lib/*/*.c lib/*/*/*.c)
LIB_OBJS := $(LIB_SRCS:lib/%.c=$(O)/lib/%.o)
TOOL_SRCS := $(wildcard bin/skv-*.c)
TOOLS := $(TOOL_SRCS:.c=)
TOOL_COMMON := $(filter-out $(TOOL_SRCS),$(wildcard bin/*.c))
TOOL_COMMON_OBJS := $(TOOL_COMMON:bin/%.c=$(O)/bin/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TESTS := $(TEST_SRCS:tests/%.c=$(O)/tests/%)
HEADERS := lib/smartkv.h $(wildcard lib/*/smartkv*.h lib/*/*/smartkv*.h)

# The CUDA code is a backend the library loads at run time (dlopen, as ggml
# loads its backends): lib/libsmartkv-cuda.so holds the kernels and links
# cudart and cuBLAS; libsmartkv and the tools link no CUDA library and run
# where CUDA is absent (lib/attend/cuda_loader.c, cuda_backend.h).
ifeq ($(USE_CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
# Kernels get no sanitizer flags, so both variants share one set of objects;
# nvcc's -MMD lists the headers each kernel really includes.
CU_OBJS := $(CU_SRCS:kernels/%.cu=build/cuda/%.o)
NVCCFLAGS ?= -O3 -lineinfo
NVCC_ALL := $(NVCCFLAGS) -std=c++17 $(LIB_INC) -Ikernels -Xcompiler -fPIC,-fvisibility=hidden,-pthread \
	-Xcompiler -Wall,-Wextra,-Wshadow,-Wno-unused-parameter $(if $(filter 1,$(WERROR)),-Xcompiler -Werror) \
	-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	-gencode arch=compute_90,code=compute_90 --Werror all-warnings
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
CUDA_BACKEND := lib/libsmartkv-cuda.so
else
CU_OBJS :=
CUDA_BACKEND :=
endif

PKG_CHECK := $(shell pkg-config --cflags --libs check 2>/dev/null)

# Parallel builds: JOBS jobs where make was not given -j (check, fuzz-build).
NPROC := $(shell nproc 2>/dev/null || echo 1)
JOBS ?= $(NPROC)
PAR = $(if $(filter -j%,$(MAKEFLAGS)),,-j$(JOBS))

RUN_UNIT = $(if $(CUDA_BACKEND),SKV_CUDA_BACKEND=$(CURDIR)/$(CUDA_BACKEND)) scripts/run-unit-tests $(TESTS)
RUN_FUZZ_REPLAY = tests/fuzz/replay-all $(FUZZ_REPLAYS)
RUN_CLI = tests/cli/run $(if $(filter 1,$(SANITIZE)),--sanitize)

.SECONDARY:
.PHONY: all check check-run test-unit test-fuzz test-cli test-cli-valgrind lint fuzz fuzz-build demo install uninstall clean deps help model bench

all: lib/libsmartkv.a lib/libsmartkv.so $(TOOLS) $(CUDA_BACKEND)

help:
	@echo 'targets: all check demo install uninstall clean deps model help'
	@echo 'knobs:   PREFIX DESTDIR CC CFLAGS SANITIZE=1 WERROR=1 CUDA=0|1 V=1 JOBS=N'

# Rebuild everything when the flags change.
$(O)/.flags: FORCE
	@mkdir -p $(O)
	@echo '$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) $(LIBS) $(USE_CUDA)' | cmp -s - $@ || \
		echo '$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) $(LIBS) $(USE_CUDA)' > $@
FORCE:

# The top-level lib/ and bin/ outputs are relinked when the variant changes.
build/.variant: FORCE
	@mkdir -p build
	@echo '$(O)' | cmp -s - $@ || echo '$(O)' > $@

LIB_PRIV_HEADERS := $(filter-out $(HEADERS),$(wildcard lib/*/*.h lib/*/*/*.h))
$(O)/lib/%.o: lib/%.c $(HEADERS) $(LIB_PRIV_HEADERS) $(O)/.flags
	@mkdir -p $(dir $@)
	$(call say,CC,$<)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(O)/bin/%.o: bin/%.c $(HEADERS) $(wildcard bin/*.h) $(O)/.flags
	@mkdir -p $(dir $@)
	$(call say,CC,$<)$(CC) $(ALL_CFLAGS) -Ibin -c -o $@ $<

build/cuda/.flags: FORCE
	@mkdir -p build/cuda
	@echo '$(NVCC) $(NVCC_ALL)' | cmp -s - $@ || echo '$(NVCC) $(NVCC_ALL)' > $@

build/cuda/%.o: kernels/%.cu build/cuda/.flags
	@mkdir -p $(dir $@)
	$(call say,NVCC,$<)$(NVCC) $(NVCC_ALL) -MMD -MP -c -o $@ $<

-include $(wildcard build/cuda/*.d)

# The backend's entry, compiled like the kernels (no sanitizer: one build).
build/cuda/backend.o: kernels/backend.c $(HEADERS) $(LIB_PRIV_HEADERS) build/cuda/.flags
	$(call say,CC,$<)$(CC) -std=gnu11 $(WARN) $(CFLAGS) -fPIC -fvisibility=hidden $(LIB_INC) -c -o $@ $<

lib/libsmartkv-cuda.so: $(CU_OBJS) build/cuda/backend.o kernels/backend.map
	$(call say,LD,$@)$(CC) -shared -Wl,-Bsymbolic -Wl,--version-script=kernels/backend.map \
		$(LDFLAGS) -o $@ $(filter %.o,$^) $(CUDA_LIBS) -lm -pthread

# Where an installed library looks for the backend after its own directory.
$(O)/lib/attend/cuda_loader.o: ALL_CFLAGS += -DSKV_CUDA_LIBDIR='"$(LIBDIR)"'

$(O)/libsmartkv.a: $(LIB_OBJS)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

lib/libsmartkv.a: $(O)/libsmartkv.a build/.variant
	$(Q)cp $< $@

lib/libsmartkv.so: $(LIB_OBJS) build/.variant
	$(call say,LD,$@)$(CC) -shared -Wl,-soname,libsmartkv.so.$(SOVERSION) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)

bin/skv-%: $(O)/bin/skv-%.o $(TOOL_COMMON_OBJS) $(O)/libsmartkv.a build/.variant
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o %.a,$^) $(LIBS)

$(O)/tests/%: tests/%.c $(O)/libsmartkv.a $(HEADERS) $(wildcard tests/*.h) $(O)/.flags
	@mkdir -p $(dir $@)
	$(call say,CC,$<)$(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(O)/libsmartkv.a $(ALL_LDFLAGS) $(PKG_CHECK) $(LIBS)

# --- fuzzing: each tests/fuzz/fuzz_<name>.c is a libFuzzer target ---
# Replayed over its corpus and crash files by `make check` (test-fuzz, normal
# compiler); run under libFuzzer by `make fuzz FUZZ_SECONDS=N` (clang).
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=%)
FUZZ_REPLAYS := $(FUZZ_NAMES:%=$(O)/fuzz/replay_%)
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR := build/fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fno-omit-frame-pointer -pthread $(LIB_INC) -Ibin -Itests/fuzz \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined -DSKV_FEW_KERNELS
FUZZ_LIB_OBJS := $(LIB_SRCS:lib/%.c=$(FUZZ_DIR)/lib/%.o) $(FUZZ_DIR)/bin/tool.o

$(O)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz.h bin/tool.c bin/tool.h \
		$(O)/libsmartkv.a $(HEADERS) $(O)/.flags
	@mkdir -p $(dir $@)
	$(call say,CC,$<)$(CC) $(ALL_CFLAGS) -Ibin -Itests/fuzz -o $@ $< tests/fuzz/replay.c bin/tool.c \
		$(O)/libsmartkv.a $(ALL_LDFLAGS) $(LIBS)

$(FUZZ_DIR)/lib/%.o: lib/%.c $(HEADERS) $(LIB_PRIV_HEADERS)
	@mkdir -p $(dir $@)
	$(call say,CLANG,$<)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<
$(FUZZ_DIR)/bin/tool.o: bin/tool.c bin/tool.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(call say,CLANG,$<)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<
$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_LIB_OBJS)
	$(call say,CLANG,$<)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJS) $(LIBS)

test-fuzz: $(FUZZ_REPLAYS)
	@$(RUN_FUZZ_REPLAY)

fuzz-build: $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
.SECONDARY: $(FUZZ_LIB_OBJS)

# JOBS targets at a time, each for FUZZ_SECONDS
fuzz:
	@$(MAKE) --no-print-directory $(PAR) fuzz-build
	@FUZZ_JOBS=$(JOBS) tests/fuzz/run-fuzz $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_NAMES)

# Static analysis, zero findings (cppcheck, clang-tidy with .clang-tidy).
# Not part of `make check` (needs both tools); .ci/run calls it.
lint:
	@scripts/lint

# --- dependencies: installed on demand so `make check` works on a fresh machine ---
deps:
	@scripts/install-deps

# The test and demo targets first make sure dependencies exist, then recurse
# so that pkg-config sees a freshly installed Check.
# The build runs JOBS jobs (one per CPU) unless make was given -j itself;
# then the unit tests, the fuzz-corpus replay and the CLI tests run one
# suite after another (inside a suite SKV_TEST_JOBS programs or scripts at
# a time: scripts/run-unit-tests, tests/cli/run).
check:
	@scripts/install-deps --quiet
	@$(MAKE) --no-print-directory $(PAR) all $(TESTS) $(FUZZ_REPLAYS)
	@$(MAKE) --no-print-directory check-run

check-run:
	@$(RUN_UNIT)
	@$(RUN_FUZZ_REPLAY)
	@$(RUN_CLI)

test-unit: all $(TESTS)
	@$(RUN_UNIT)

test-cli: all
	@$(RUN_CLI)

# The CLI tests with every tool under valgrind memcheck (leaks are errors).
# Not part of `make check` (needs valgrind; slow); .ci/run calls it.
test-cli-valgrind: all
	@test "$(SANITIZE)" != 1 || { echo "test-cli-valgrind: build without SANITIZE=1" >&2; exit 2; }
	@command -v valgrind >/dev/null || { echo "test-cli-valgrind: valgrind not found (scripts/install-deps --ci)" >&2; exit 2; }
	@tests/cli/run --valgrind

demo:
	@scripts/install-deps --quiet
	@$(MAKE) --no-print-directory all
	@scripts/demo

model:
	@scripts/fetch-model

bench: all
	@for b in scripts/bench-*; do echo "== $$b"; $$b || exit 1; done

# --- install ---
smartkv.pc: smartkv.pc.in Makefile
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
		-e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS_PRIVATE@|$(LIBS) -pthread|' $< > $@

install: all smartkv.pc
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man7 \
		$(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)
	install -m 644 lib/libsmartkv.a $(DESTDIR)$(LIBDIR)
	install -m 755 lib/libsmartkv.so $(DESTDIR)$(LIBDIR)/libsmartkv.so.$(VERSION)
	$(if $(CUDA_BACKEND),install -m 755 $(CUDA_BACKEND) $(DESTDIR)$(LIBDIR))
	ln -sf libsmartkv.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libsmartkv.so.$(SOVERSION)
	ln -sf libsmartkv.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libsmartkv.so
	install -m 644 $(HEADERS) $(DESTDIR)$(INCDIR)
	install -m 644 $(wildcard man/man1/*.1) $(DESTDIR)$(MANDIR)/man1
	install -m 644 $(wildcard man/man5/*.5) $(DESTDIR)$(MANDIR)/man5
	install -m 644 $(wildcard man/man7/*.7) $(DESTDIR)$(MANDIR)/man7
	install -m 644 smartkv.pc $(DESTDIR)$(PKGCONFIGDIR)

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(TOOLS)))
	rm -f $(DESTDIR)$(LIBDIR)/libsmartkv.a $(DESTDIR)$(LIBDIR)/libsmartkv.so* \
		$(DESTDIR)$(LIBDIR)/libsmartkv-cuda.so
	rm -f $(addprefix $(DESTDIR)$(INCDIR)/,$(notdir $(HEADERS)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(wildcard man/man1/*.1)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(wildcard man/man5/*.5)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man7/,$(notdir $(wildcard man/man7/*.7)))
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/smartkv.pc

clean:
	rm -rf build lib/libsmartkv.a lib/libsmartkv.so lib/libsmartkv-cuda.so $(TOOLS) smartkv.pc
