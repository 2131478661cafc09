# Thin wrapper around Meson.  `make demo` and `make check` are all a
# newcomer needs on a fresh Debian machine (run as root, or with the
# packages below already installed).
BUILD ?= build
SANBUILD ?= build-san

# Debian packages the build, the tests and the oracle need.
DEPS = meson ninja-build pkg-config gcc clang zlib1g-dev libzstd-dev \
       libssl-dev libdeflate-dev libisal-dev libjson-c-dev libcmocka-dev \
       python3 python3-pytest python3-pytest-xdist python3-libqcow qemu-utils libqcow-utils libnbd-bin \
       nbdkit nbdkit-plugin-dev python3-libnbd libfuse3-dev fuse3
DEPS += libvhdi-utils
DEPS += time

all: $(BUILD)/build.ninja
	meson compile -C $(BUILD)

deps:
	@./scripts/install-deps.sh $(DEPS)
	@./tests/data/vhdx/fetch-samples.sh

$(BUILD)/build.ninja: | deps
	meson setup $(BUILD) -Dtests=enabled -Dwerror=true

$(SANBUILD)/build.ninja: | deps
	meson setup $(SANBUILD) -Dtests=enabled -Db_sanitize=address,undefined \
	    -Db_lundef=false -Dbuildtype=debug

check: deps $(BUILD)/build.ninja $(SANBUILD)/build.ninja
	meson compile -C $(BUILD)
	meson test -C $(BUILD) --print-errorlogs
	meson compile -C $(SANBUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    meson test -C $(SANBUILD) --print-errorlogs --timeout-multiplier=3

demo: all
	./scripts/demo.sh $(BUILD)/tools/vimg/vimg

clean:
	rm -rf $(BUILD) $(SANBUILD)

.PHONY: all deps check demo clean
