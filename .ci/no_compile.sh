# Sourced by .ci/run: `pip_no_compile pip install ...` runs a pip install that must not compile C or C++.
#
# Two checks, because either alone can be dodged: (1) the usual compilers on PATH and in CC/CXX are replaced by
# scripts that fail loudly, so a build backend that reaches for one (setuptools' build_ext, scikit-build's CMake)
# stops at once with a message naming the tool; (2) pip's own log must show every wheel it built to be pure Python
# (`-none-any`), which catches a backend that brings its own compiler. Building a pure-Python sdist is fine.
pip_no_compile() {
  local shims log built
  shims="$(mktemp -d)"
  log="$(mktemp)"
  for tool in cc gcc g++ c++ clang clang++ cmake ninja make; do
    cat > "$shims/$tool" <<SHIM
#!/bin/sh
echo "CI: the install ran the compiler '$tool \$*': a dependency is being built from C/C++ source. Install it from a wheel, or (if bootembed never imports it) with --no-deps." >&2
exit 97
SHIM
    chmod +x "$shims/$tool"
  done
  PATH="$shims:$PATH" CC="$shims/cc" CXX="$shims/c++" CMAKE_ARGS="" "$@" --log "$log" || {
    echo "CI: '$*' failed (log: $log)" >&2; return 1; }
  # pip logs "Created wheel for NAME: filename=NAME-VER-TAGS.whl" for each wheel it built from a source package.
  built="$(grep -o 'Created wheel for [^:]*: filename=[^ ]*' "$log" | grep -v -- '-none-any\.whl$' || true)"
  if [ -n "$built" ]; then
    echo "CI: pip built platform-specific (compiled) wheels from source; the install must not compile:" >&2
    echo "$built" >&2
    return 1
  fi
  grep -o 'Created wheel for [^:]*: filename=[^ ]*' "$log" | sed 's/^/CI: built a pure-Python wheel: /' || true
  rm -rf "$shims" "$log"
}
