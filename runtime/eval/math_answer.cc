#include "runtime/eval/math_answer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <numbers>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "runtime/core/status.h"

namespace resa {

namespace {

bool IsWord(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

void ReplaceAll(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

std::string Trim(std::string_view s) {
  return std::string(absl::StripAsciiWhitespace(AsAbsl(s)));
}
std::string Lower(std::string_view s) { return absl::AsciiStrToLower(AsAbsl(s)); }

// Index one past the '}' matching the '{' at `open`, or npos.
size_t MatchBrace(std::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i + 1;
  }
  return std::string::npos;
}

// Replaces every `\cmd{X}` by X (keep) or by nothing, braces balanced.
void UnwrapCommand(std::string& s, std::string_view cmd, bool keep) {
  const std::string open = std::string(cmd) + "{";
  size_t pos = 0;
  while ((pos = s.find(open, pos)) != std::string::npos) {
    const size_t brace = pos + cmd.size();
    const size_t end = MatchBrace(s, brace);
    if (end == std::string::npos) return;
    const std::string inner = keep ? s.substr(brace + 1, end - brace - 2) : "";
    s.replace(pos, end - pos, inner);
    pos += inner.size();
  }
}

// Unit words of the reference (MathQA units, plural forms too), minus its one-letter entries
// ("a", "t", "m", "s", ...), which would also delete variables such as the a in \frac{a}{b}.
const std::vector<std::string>& UnitWords() {
  static const std::vector<std::string> words = [] {
    std::vector<std::string> base = {
        "east", "degree", "mph", "kmph", "ft", "m sqaure", "sq m", "deg", "mile", "monkey",
        "prime", "ratio", "profit of rs", "rd", "gm", "p . m", "lb", "tile", "per", "dm", "lt",
        "gain", "ab", "way", "west", "no change", "men", "soldier", "pie", "bc", "excess", "st",
        "inches", "noon", "percent", "by", "gal", "kmh", "acre", "rise", "a . m", "th", "sq",
        "mark", "toy", "coin", "sq . m", "gallon", "profit", "minw", "yr", "women", "feet", "am",
        "pm", "hr", "cu cm", "square", "are", "rupee", "rounds", "cubic", "cc", "mtr", "ohm",
        "number", "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt",
        "sq inch", "mp", "hectare", "more", "unit", "cu . m", "cm 2", "rs .", "rs", "kg",
        "month", "km", "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year", "increase",
        "decrease", "less", "Surface", "litre", "pi sq m", "metre", "meter", "inch"};
    std::vector<std::string> all = base;
    for (const std::string& w : base) all.push_back(w + "s");
    return all;
  }();
  return words;
}

// Deletes `word` where it stands alone: preceded by the start or a non-word character and
// followed by the end or a non-word character (the reference's (^|\W)word($|\W)).
std::string RemoveWord(const std::string& s, const std::string& word) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const bool left_ok = i == 0 || !IsWord(s[i - 1]);
    if (left_ok && s.compare(i, word.size(), word) == 0) {
      const size_t end = i + word.size();
      if (end == s.size() || !IsWord(s[end])) {
        i = end;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

const std::map<std::string, int>& NumberWords() {
  static const std::map<std::string, int> words = {
      {"zero", 0},     {"one", 1},       {"two", 2},       {"three", 3},     {"four", 4},
      {"five", 5},     {"six", 6},       {"seven", 7},     {"eight", 8},     {"nine", 9},
      {"ten", 10},     {"eleven", 11},   {"twelve", 12},   {"thirteen", 13}, {"fourteen", 14},
      {"fifteen", 15}, {"sixteen", 16},  {"seventeen", 17}, {"eighteen", 18}, {"nineteen", 19},
      {"twenty", 20},  {"thirty", 30},   {"forty", 40},    {"fifty", 50},    {"sixty", 60},
      {"seventy", 70}, {"eighty", 80},   {"ninety", 90},   {"hundred", 100}};
  return words;
}

// "\frac12" -> "\frac{1}{2}", "\frac1{72}" -> "\frac{1}{72}", "\frac{a}b" stays (as reference).
std::string FixFracs(const std::string& s) {
  const std::string key = "\\frac";
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t at = s.find(key, pos);
    out += s.substr(pos, at == std::string::npos ? std::string::npos : at - pos);
    if (at == std::string::npos) break;
    out += key;
    size_t i = at + key.size();
    if (i < s.size() && s[i] != '{' && s[i] != '\\') {
      if (i + 1 >= s.size()) return s;
      out += std::string("{") + s[i] + "}";
      ++i;
      if (s[i] != '{' && s[i] != '\\') {
        out += std::string("{") + s[i] + "}";
        ++i;
      }
    }
    pos = i;
  }
  return out;
}

bool IsInteger(std::string_view s) {
  size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (!IsDigit(s[i])) return false;
  }
  return true;
}

// "3/4" -> "\frac{3}{4}" when both sides are integers (or contain sqrt), like the reference.
std::string FixSlash(const std::string& s) {
  if (std::count(s.begin(), s.end(), '/') != 1) return s;
  const size_t slash = s.find('/');
  const std::string a = s.substr(0, slash), b = s.substr(slash + 1);
  const bool a_ok = IsInteger(a) || a.find("sqrt") != std::string::npos;
  const bool b_ok = IsInteger(b) || b.find("sqrt") != std::string::npos;
  if (!a_ok || !b_ok || a.empty() || b.empty()) return s;
  return "\\frac{" + a + "}{" + b + "}";
}

// "\sqrt2" -> "\sqrt{2}", "\sqrtx" -> "\sqrt{x}" (a run of word characters).
std::string FixSqrt(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, 5, "\\sqrt") == 0 && i + 5 < s.size() && IsWord(s[i + 5])) {
      size_t j = i + 5;
      while (j < s.size() && IsWord(s[j])) ++j;
      out += "\\sqrt{" + s.substr(i + 5, j - i - 5) + "}";
      i = j;
    } else {
      out += s[i++];
    }
  }
  return out;
}

// "27.000" -> "27", "3.0x" -> "3x": a decimal point followed only by zeros is dropped.
std::string DropZeroDecimals(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '.' && i > 0 && IsDigit(s[i - 1])) {
      size_t j = i + 1;
      while (j < s.size() && s[j] == '0') ++j;
      if (j == s.size() || !IsDigit(s[j])) {
        i = j;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

}  // namespace

std::optional<std::string> LastBoxed(std::string_view text) {
  size_t at = std::string_view::npos;
  size_t len = 0;
  for (std::string_view key : {"\\boxed", "\\fbox"}) {
    const size_t p = text.rfind(key);
    if (p != std::string_view::npos && (at == std::string_view::npos || p > at)) {
      at = p;
      len = key.size();
    }
  }
  if (at == std::string_view::npos) return std::nullopt;
  size_t i = at + len;
  if (i < text.size() && text[i] == '{') {
    const size_t end = MatchBrace(text, i);
    if (end == std::string_view::npos) return std::nullopt;
    return std::string(text.substr(i + 1, end - i - 2));
  }
  const size_t dollar = text.find('$', i);
  return Trim(text.substr(i, dollar == std::string_view::npos ? std::string_view::npos : dollar - i));
}

std::string NormalizeAnswer(std::string_view answer, bool skip_units) {
  std::string s = Trim(answer);
  std::erase(s, '\n');
  while (!s.empty() && s.back() == '.') s.pop_back();
  ReplaceAll(s, "\\!", "");
  // Matrices: array/bmatrix are spelled as pmatrix.
  for (size_t p; (p = s.find("\\begin{array}{")) != std::string::npos;) {
    const size_t end = MatchBrace(s, p + 13);
    if (end == std::string::npos) break;
    s.replace(p, end - p, "\\begin{pmatrix}");
  }
  ReplaceAll(s, "\\end{array}", "\\end{pmatrix}");
  ReplaceAll(s, "bmatrix", "pmatrix");
  ReplaceAll(s, "tfrac", "frac");
  ReplaceAll(s, "dfrac", "frac");
  ReplaceAll(s, "\\neq", "\\ne");
  ReplaceAll(s, "\\leq", "\\le");
  ReplaceAll(s, "\\geq", "\\ge");
  ReplaceAll(s, "\\left", "");
  ReplaceAll(s, "\\right", "");
  ReplaceAll(s, "\\{", "{");
  ReplaceAll(s, "\\}", "}");
  // A trailing \text{...} is a unit ("5\text{ cm}") unless it is the whole answer.
  if (!s.empty() && s.back() == '}') {
    const size_t p = s.find("\\text{");
    if (p != std::string::npos && MatchBrace(s, p + 5) == s.size()) {
      const std::string head = Trim(s.substr(0, p));
      if (!head.empty()) s = head;
    }
  }
  if (!skip_units) {
    for (int pass = 0; pass < 2; ++pass) {
      for (const std::string& w : UnitWords()) {
        std::string t = RemoveWord(s, w);
        if (!Trim(t).empty()) s = std::move(t);
      }
    }
  }
  ReplaceAll(s, "^{\\circ}", "");
  ReplaceAll(s, "^\\circ", "");
  ReplaceAll(s, "\\$", "");
  ReplaceAll(s, "$", "");
  ReplaceAll(s, "\\(", "");
  ReplaceAll(s, "\\)", "");
  if (auto it = NumberWords().find(Lower(Trim(s))); it != NumberWords().end()) {
    s = std::to_string(it->second);
  }
  UnwrapCommand(s, "\\text", true);
  UnwrapCommand(s, "\\textbf", true);
  UnwrapCommand(s, "\\mathrm", true);
  for (std::string_view key : {"x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to",
                               "z\\to"}) {
    ReplaceAll(s, key, "");
  }
  ReplaceAll(s, "\\emptyset", "{}");
  ReplaceAll(s, "(-\\infty,\\infty)", "\\mathbb{R}");
  ReplaceAll(s, "\\%", "");
  ReplaceAll(s, "%", "");
  ReplaceAll(s, " .", " 0.");
  ReplaceAll(s, "{.", "{0.");
  ReplaceAll(s, "infinity", "\\infty");
  if (s.find("\\infty") == std::string::npos) ReplaceAll(s, "inf", "\\infty");
  ReplaceAll(s, "and", "");
  ReplaceAll(s, "\\mathbf", "");
  UnwrapCommand(s, "\\mbox", false);
  if (s.find('j') != std::string::npos && s.find('i') == std::string::npos) {
    std::replace(s.begin(), s.end(), 'j', 'i');
  }
  s = DropZeroDecimals(s);
  if (s.empty()) return s;
  if (s[0] == '.') s = "0" + s;
  // "k = 5" -> "5": a one- or two-character left-hand side is a name, not part of the answer.
  if (std::count(s.begin(), s.end(), '=') == 1) {
    const size_t eq = s.find('=');
    if (eq <= 2) s = s.substr(eq + 1);
  }
  s = FixSqrt(s);
  std::erase(s, ' ');
  s = FixFracs(s);
  s = FixSlash(s);
  return s;
}

std::string ExtractAnswer(std::string_view output_view, std::string_view dataset) {
  std::string output(output_view);
  ReplaceAll(output, "\xd0\xba\xd0\xb8", "");  // "ки", a step tag of some reward-model data
  std::string pred;
  const size_t minerva = output.find("final answer is $");
  size_t hope = std::string::npos;
  if (minerva != std::string::npos) hope = output.find("$. I hope", minerva + 17);
  if (minerva != std::string::npos && hope != std::string::npos) {
    pred = Trim(std::string_view(output).substr(minerva + 17, hope - minerva - 17));
  } else if (output.find("boxed") != std::string::npos) {
    // As the reference: the text after the last "boxed", brace-matched (an unclosed brace keeps
    // what is there, since a generation cut at the token budget may end inside the box).
    const std::string tail = output.substr(output.rfind("boxed") + 5);
    if (!tail.empty() && tail[0] == '{') {
      int depth = 1;
      for (size_t i = 1; i < tail.size(); ++i) {
        if (tail[i] == '{') ++depth;
        if (tail[i] == '}' && --depth == 0) break;
        pred += tail[i];
      }
    } else {
      pred = Trim(tail.substr(0, tail.find('$')));
    }
  } else if (size_t p = output.rfind("he answer is"); p != std::string::npos) {
    pred = Trim(std::string_view(output).substr(p + 12));
  } else if (size_t q = output.rfind("final answer is"); q != std::string::npos) {
    pred = Trim(std::string_view(output).substr(q + 15));
  } else {
    // The last number (-?\d*\.?\d+) of the text without thousands commas.
    std::string t = output;
    std::erase(t, ',');
    size_t end = std::string::npos;
    for (size_t i = t.size(); i-- > 0;) {
      if (IsDigit(t[i])) {
        end = i + 1;
        break;
      }
    }
    if (end != std::string::npos) {
      size_t b = end;
      while (b > 0 && IsDigit(t[b - 1])) --b;
      if (b > 0 && t[b - 1] == '.') {
        --b;
        while (b > 0 && IsDigit(t[b - 1])) --b;
      }
      if (b > 0 && t[b - 1] == '-') --b;
      pred = t.substr(b, end - b);
    }
  }
  // Line breaks with their indentation go; a leading ':' and a trailing '.' or '/' too.
  std::string flat;
  for (size_t i = 0; i < pred.size(); ++i) {
    if (pred[i] == '\n') {
      while (i + 1 < pred.size() && std::isspace(static_cast<unsigned char>(pred[i + 1]))) ++i;
      continue;
    }
    flat += pred[i];
  }
  if (!flat.empty() && flat[0] == ':') flat.erase(0, 1);
  if (!flat.empty() && (flat.back() == '.' || flat.back() == '/')) flat.pop_back();
  return NormalizeAnswer(flat, /*skip_units=*/dataset == "minerva_math");
}

}  // namespace resa
