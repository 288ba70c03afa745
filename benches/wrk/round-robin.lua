-- wrk: GET /function/f0 .. /function/f{FUNCTIONS-1} in turn (each wrk thread runs its own
-- copy, starting at a different function).
local n = tonumber(os.getenv("FUNCTIONS") or "1000")
local i = math.random(0, n - 1)
request = function()
  i = (i + 1) % n
  return wrk.format("GET", "/function/f" .. i)
end
