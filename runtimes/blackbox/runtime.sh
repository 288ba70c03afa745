#!/bin/sh
# An OpenWhisk action runtime in the style of openwhisk/dockerskeleton, in busybox sh (nc,
# awk, base64, unzip), written from the action runtime protocol (apache/openwhisk
# docs/actions-new.md, docs/actions-docker.md):
#
# - POST /init {"value": {"name", "main", "code", "binary", "env"}}: with code, the action is
#   that executable (source text starting with #!, or with "binary": true a base64 zip holding
#   an `exec` file); without code it is the image's built-in $OW_ACTION_EXEC (default
#   /action/exec): a blackbox action. The members of "env" are exported to the action (string
#   values as they are, others as JSON text). Answers {"ok": true}, else 502 {"error": ...}; a second
#   /init answers 403.
# - POST /run {"value": params, "activation_id", ...}: runs the executable with the params
#   (JSON) as its one argument and the __OW_* variables in its environment; the last line of
#   its stdout is the result (a JSON object, else 502 "The action did not return a
#   dictionary."), the lines before it and its stderr are the activation's logs, followed by
#   the line XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX on stdout and on stderr.
#
# Listens on the port in the environment variable `port` (what the faas-rs watchdog sets),
# else 8080. Each connection is answered by a new `runtime.sh --serve` under `nc -ll`.
set -u
BB=${BUSYBOX:-busybox}

if [ "${1:-}" != "--serve" ]; then
  OW_STATE=$($BB mktemp -d "${TMPDIR:-/tmp}/ow-action.XXXXXX") || exit 1
  export OW_STATE
  # The runtime's own stdout, kept as fd 3 for the action's output: in a connection's
  # handler fd 1 is the socket.
  exec 3>&1
  exec $BB nc -ll -p "${port:-8080}" -e "$0" --serve
fi

MARKER=XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX
CR=$(printf '\r')

# `json_get KEY`: the raw JSON value of KEY at the top level of the object on stdin.
# `json_get KEY str`: the same for a string value, unescaped.
JSON_AWK='
function hexval(h,   i, c, v) {
  v = 0
  for (i = 1; i <= length(h); i++) {
    c = index("0123456789abcdef", tolower(substr(h, i, 1))) - 1
    v = v * 16 + c
  }
  return v
}
function unescape(s,   out, i, n, c) {
  out = ""; n = length(s)
  for (i = 1; i <= n; i++) {
    c = substr(s, i, 1)
    if (c != "\\") { out = out c; continue }
    i++; c = substr(s, i, 1)
    if (c == "n") out = out "\n"
    else if (c == "t") out = out "\t"
    else if (c == "r") out = out "\r"
    else if (c == "b") out = out "\b"
    else if (c == "f") out = out "\f"
    else if (c == "u") { out = out sprintf("%c", hexval(substr(s, i + 1, 4))); i += 4 }
    else out = out c
  }
  return out
}
# The end (index of the last character) of the value starting at i.
function value_end(s, i,   n, c, depth, instr, esc) {
  n = length(s); depth = 0; instr = 0; esc = 0
  for (; i <= n; i++) {
    c = substr(s, i, 1)
    if (instr) {
      if (esc) esc = 0
      else if (c == "\\") esc = 1
      else if (c == "\"") { instr = 0; if (depth == 0) return i }
      continue
    }
    if (c == "\"") instr = 1
    else if (c == "{" || c == "[") depth++
    else if (c == "}" || c == "]") { depth--; if (depth == 0) return i; if (depth < 0) return i - 1 }
    else if (c == "," && depth == 0) return i - 1
  }
  return n
}
# A string as one sh word, in single quotes (39 is the quote character).
function shq(v,   q, out, j, ch) {
  q = sprintf("%c", 39); out = ""
  for (j = 1; j <= length(v); j++) {
    ch = substr(v, j, 1)
    if (ch == q) out = out q "\\" q q
    else out = out ch
  }
  return q out q
}
# mode "exports": an `export NAME=VALUE` line per top-level member of the object whose name
# is a variable name (strings unescaped, other values as JSON text).
function exports(s,   n, i, e, k, v) {
  n = length(s); i = index(s, "{") + 1
  while (i > 1 && i <= n) {
    if (substr(s, i, 1) != "\"") { i++; continue }
    e = value_end(s, i); k = unescape(substr(s, i + 1, e - i - 1)); i = e + 1
    while (i <= n && index(" :\t\n\r", substr(s, i, 1)) > 0) i++
    e = value_end(s, i); v = substr(s, i, e - i + 1); i = e + 1
    if (substr(v, 1, 1) == "\"") v = unescape(substr(v, 2, length(v) - 2))
    if (k ~ /^[A-Za-z_][A-Za-z0-9_]*$/) print "export " k "=" shq(v)
  }
}
# The raw JSON value of `key` at the top level of the object s ("" when it has none).
function get(s, key,   n, i, c, depth, instr, esc, want) {
  n = length(s); depth = 0; instr = 0; esc = 0; want = "\"" key "\":"
  for (i = 1; i <= n; i++) {
    c = substr(s, i, 1)
    if (instr) {
      if (esc) esc = 0
      else if (c == "\\") esc = 1
      else if (c == "\"") instr = 0
      continue
    }
    if (c == "\"") {
      if (depth == 1 && substr(s, i, length(want)) == want) {
        i += length(want)
        while (substr(s, i, 1) == " ") i++
        return substr(s, i, value_end(s, i) - i + 1)
      }
      instr = 1
    }
    else if (c == "{" || c == "[") depth++
    else if (c == "}" || c == "]") depth--
  }
  return ""
}
# A JSON string value unescaped ("" for any other value).
function str(v) {
  if (substr(v, 1, 1) != "\"") return ""
  return unescape(substr(v, 2, length(v) - 2))
}
{ s = s $0 "\n" }
END {
  if (mode == "exports") { exports(s); exit 0 }
  # mode "run": a /run request as sh: `params=...` and the __OW_* exports, in one pass.
  if (mode == "run") {
    print "params=" shq(get(s, "value"))
    split("activation_id action_name deadline api_key namespace transaction_id", ks, " ")
    for (j = 1; j <= 6; j++) print "export __OW_" toupper(ks[j]) "=" shq(str(get(s, ks[j])))
    exit 0
  }
  v = get(s, key)
  if (mode == "str") v = str(v)
  printf "%s", v
}'
json_get() { $BB awk -v key="$1" -v mode="${2:-raw}" "$JSON_AWK"; }

json_escape() { $BB awk 'BEGIN { ORS = "" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); if (NR > 1) print "\\n"; print }'; }

answer() { # STATUS JSON
  len=$(printf '%s' "$2" | $BB wc -c)
  printf 'HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "$1" "$len" "$2"
}

fail() { # STATUS MESSAGE
  answer "$1" "{\"error\":\"$(printf '%s' "$2" | json_escape)\"}"
  exit 0
}

# The request: line, headers (for Content-Length), body.
read -r _method path _proto || exit 0
len=0
while IFS= read -r line; do
  line=${line%"$CR"}
  [ -z "$line" ] && break
  case "$line" in
    [Cc]ontent-[Ll]ength:*) len=$(echo "${line#*:}" | $BB tr -d ' ') ;;
  esac
done
body=$($BB head -c "$len")

case "$path" in
/init)
  [ -e "$OW_STATE/exec_path" ] && fail "403 Forbidden" "Cannot initialize the action more than once."
  printf '%s' "$body" | json_get value > "$OW_STATE/init.json"
  code=$(json_get code str < "$OW_STATE/init.json")
  binary=$(json_get binary < "$OW_STATE/init.json")
  if [ -z "$code" ]; then
    exe=${OW_ACTION_EXEC:-/action/exec}
    [ -x "$exe" ] || fail "502 Bad Gateway" "Initialization has failed due to: the image has no executable $exe and the action no code"
  elif [ "$binary" = "true" ]; then
    $BB mkdir -p "$OW_STATE/action"
    printf '%s' "$code" | $BB base64 -d > "$OW_STATE/action.zip" 2>/dev/null \
      || fail "502 Bad Gateway" "Initialization has failed due to: the code is not base64"
    $BB unzip -o -q "$OW_STATE/action.zip" -d "$OW_STATE/action" >&2 \
      || fail "502 Bad Gateway" "Initialization has failed due to: the code is not a zip"
    exe="$OW_STATE/action/exec"
    [ -f "$exe" ] || fail "502 Bad Gateway" "Initialization has failed due to: the zip has no file exec"
    $BB chmod +x "$exe"
  else
    case "$code" in
      '#!'*) ;;
      *) fail "502 Bad Gateway" "Initialization has failed due to: the code must be an executable script starting with #!" ;;
    esac
    exe="$OW_STATE/exec"
    printf '%s\n' "$code" > "$exe"
    $BB chmod +x "$exe"
  fi
  json_get env < "$OW_STATE/init.json" | $BB awk -v mode=exports "$JSON_AWK" > "$OW_STATE/env.sh"
  printf '%s' "$exe" > "$OW_STATE/exec_path"
  answer "200 OK" '{"ok":true}'
  ;;
/run)
  [ -e "$OW_STATE/exec_path" ] || fail "502 Bad Gateway" "Cannot invoke an uninitialized action."
  exe=$($BB cat "$OW_STATE/exec_path")
  # The parameters and the __OW_* variables, from one awk.
  eval "$(printf '%s' "$body" | $BB awk -v mode=run "$JSON_AWK")"
  [ -n "$params" ] || params='{}'
  # /init's env, exported for the action.
  . "$OW_STATE/env.sh"
  out="$OW_STATE/out.$$"
  "$exe" "$params" > "$out"
  result=$($BB tail -n 1 "$out")
  $BB sed '$d' "$out" >&3
  $BB rm -f "$out"
  echo "$MARKER" >&3
  echo "$MARKER" >&2
  case "$result" in
    '{'*'}') answer "200 OK" "$result" ;;
    *) fail "502 Bad Gateway" "The action did not return a dictionary." ;;
  esac
  ;;
*)
  fail "404 Not Found" "Not found: $path"
  ;;
esac
