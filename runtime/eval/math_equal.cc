// MathEqual and the numeric LaTeX evaluator behind it (declared in math_answer.h).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numbers>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "runtime/core/hash.h"
#include "runtime/core/status.h"
#include "runtime/eval/math_answer.h"

namespace resa {

namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }

std::string Trim(std::string_view s) {
  return std::string(absl::StripAsciiWhitespace(AsAbsl(s)));
}
std::string Lower(std::string_view s) { return absl::AsciiStrToLower(AsAbsl(s)); }

bool Close(double a, double b, double rel) {
  if (a == b) return true;
  return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b));
}

// A plain number: optional sign, digits with optional thousands commas ("12,345") and decimals,
// optional exponent ("4.5e33"), optional trailing percent (divides by 100, as parse_digits).
std::optional<double> ParseNumber(std::string_view s) {
  std::string t = Trim(s);
  double scale = 1.0;
  if (t.size() > 2 && t.compare(t.size() - 2, 2, "\\%") == 0) {
    t.resize(t.size() - 2);
    scale = 0.01;
  } else if (!t.empty() && t.back() == '%') {
    t.pop_back();
    scale = 0.01;
  }
  size_t i = 0;
  if (i < t.size() && (t[i] == '-' || t[i] == '+')) ++i;
  const size_t int_begin = i;
  std::string digits(t.substr(0, i));
  int group = -1;  // digits since the last comma; -1: no comma seen
  while (i < t.size() && (IsDigit(t[i]) || t[i] == ',')) {
    if (t[i] == ',') {
      if (i == int_begin || (group != -1 && group != 3) || (group == -1 && i - int_begin > 3)) {
        return std::nullopt;
      }
      group = 0;
    } else {
      digits += t[i];
      if (group >= 0) ++group;
    }
    ++i;
  }
  if (group != -1 && group != 3) return std::nullopt;
  if (i < t.size() && t[i] == '.') {
    digits += t[i++];
    while (i < t.size() && IsDigit(t[i])) digits += t[i++];
  }
  if (digits.find_first_of("0123456789") == std::string::npos) return std::nullopt;
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    size_t j = i + 1;
    if (j < t.size() && (t[j] == '-' || t[j] == '+')) ++j;
    if (j < t.size() && IsDigit(t[j])) {
      digits += 'e';
      digits.append(t, i + 1, std::string::npos);
      i = t.size();
      for (size_t k = j; k < t.size(); ++k) {
        if (!IsDigit(t[k])) return std::nullopt;
      }
    }
  }
  if (i != t.size()) return std::nullopt;
  return std::strtod(digits.c_str(), nullptr) * scale;
}

// Digits with an optional sign and thousands commas, nothing else ("1,000", "-7").
bool IsIntegerText(std::string_view s) {
  return s.find_first_not_of("+-0123456789,") == std::string_view::npos;
}

// Splits at commas outside (), [] and {}.
std::vector<std::string> SplitTopLevel(std::string_view s, char sep = ',') {
  std::vector<std::string> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == sep && depth == 0) {
      parts.push_back(Trim(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  parts.push_back(Trim(s.substr(start)));
  return parts;
}

// Whether the bracket at s[0] closes at the last character (so "(1,2)" but not "(1)+(2)").
bool WrappedWhole(std::string_view s) {
  if (s.size() < 2) return false;
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') {
      if (--depth == 0 && i + 1 != s.size()) return false;
    }
  }
  return depth == 0;
}

bool IsGreekLetter(std::string_view name) {
  static const std::set<std::string_view> kGreek = {
      "alpha", "beta",  "gamma", "delta", "epsilon", "varepsilon", "zeta",  "eta",   "theta",
      "vartheta", "iota", "kappa", "lambda", "mu",   "nu",         "xi",    "rho",   "sigma",
      "tau",   "upsilon", "phi",  "varphi", "chi",   "psi",        "omega", "Gamma", "Delta",
      "Theta", "Lambda", "Xi",    "Sigma", "Phi",    "Psi",        "Omega"};
  return kGreek.count(name) > 0;
}

// Recursive-descent evaluation of a LaTeX arithmetic expression. Free variables (a letter,
// optionally with a subscript) take the values `var_value` gives them; `vars` collects names.
class LatexEvaluator {
 public:
  LatexEvaluator(std::string_view s, int trial, std::set<std::string>* vars)
      : s_(s), trial_(trial), vars_(vars) {}

  std::optional<double> Run() {
    const double v = Expr();
    SkipSpace();
    if (!ok_ || pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void SkipSpace() {
    while (pos_ < s_.size()) {
      if (std::isspace(static_cast<unsigned char>(s_[pos_]))) {
        ++pos_;
      } else if (Peek("\\,") || Peek("\\;") || Peek("\\:") || Peek("\\ ")) {
        pos_ += 2;
      } else if (Peek("\\quad")) {
        pos_ += 5;
      } else {
        break;
      }
    }
  }
  bool Peek(std::string_view t) const { return s_.substr(pos_, t.size()) == t; }
  bool Eat(std::string_view t) {
    SkipSpace();
    if (!Peek(t)) return false;
    pos_ += t.size();
    return true;
  }
  double Fail() {
    ok_ = false;
    return 0.0;
  }
  // The backslash command at pos_, not consumed: "\\frac" -> "frac". Normalisation removed the
  // spaces, so "\\pi G" arrives as "\\piG": a name that is not a known command is cut to its
  // longest known prefix.
  std::string_view CommandAt() const {
    if (pos_ >= s_.size() || s_[pos_] != '\\') return {};
    size_t j = pos_ + 1;
    while (j < s_.size() && IsAlpha(s_[j])) ++j;
    const std::string_view name = s_.substr(pos_ + 1, j - pos_ - 1);
    for (size_t len = name.size(); len > 0; --len) {
      if (IsValueCommand(name.substr(0, len))) return name.substr(0, len);
    }
    return name;
  }
  static bool IsValueCommand(std::string_view c) {
    return c == "frac" || c == "sqrt" || c == "pi" || c == "sin" || c == "cos" || c == "tan" ||
           c == "ln" || c == "log" || c == "exp" || c == "binom" || c == "mathrm" ||
           c == "operatorname" || IsGreekLetter(c);
  }

  double Expr() {
    double v = Term();
    while (ok_) {
      if (Eat("+")) {
        v += Term();
      } else if (Eat("-")) {
        v -= Term();
      } else {
        break;
      }
    }
    return v;
  }

  // Whether the next token can start a factor of an implicit product ("2\pi", "3x", "2(x+1)").
  bool StartsFactor() {
    SkipSpace();
    if (pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (IsDigit(c) || IsAlpha(c) || c == '(' || c == '{') return true;
    return c == '\\' && IsValueCommand(CommandAt());
  }

  double Term() {
    double v = Unary();
    while (ok_) {
      if (Eat("*") || Eat("\\cdot") || Eat("\\times")) {
        v *= Unary();
      } else if (Eat("/") || Eat("\\div")) {
        v /= Unary();
      } else if (StartsFactor()) {
        v *= Power();
      } else {
        break;
      }
    }
    return v;
  }

  double Unary() {
    if (Eat("-")) return -Unary();
    if (Eat("+")) return Unary();
    return Power();
  }

  double Power() {
    double base = Postfix(Primary());
    if (!Eat("^")) return base;
    SkipSpace();
    double exp;
    if (pos_ < s_.size() && IsDigit(s_[pos_])) {
      exp = s_[pos_++] - '0';  // x^23 is x^2 * 3 in LaTeX
    } else if (Eat("-")) {
      exp = -Postfix(Primary());
    } else {
      exp = Postfix(Primary());
    }
    return std::pow(base, exp);
  }

  double Postfix(double v) {
    if (Eat("!")) {
      if (v < 0 || v > 170 || v != std::floor(v)) return Fail();
      double f = 1.0;
      for (int k = 2; k <= int(v); ++k) f *= k;
      return f;
    }
    return v;
  }

  double Group() {  // {expr}
    if (!Eat("{")) return Fail();
    const double v = Expr();
    if (!Eat("}")) return Fail();
    return v;
  }

  double Number() {
    const size_t b = pos_;
    while (pos_ < s_.size() && (IsDigit(s_[pos_]) || s_[pos_] == '.')) ++pos_;
    double v = std::strtod(std::string(s_.substr(b, pos_ - b)).c_str(), nullptr);
    // Scientific notation "4.5e33" (only when digits follow the e).
    if (pos_ + 1 < s_.size() && s_[pos_] == 'e' &&
        (IsDigit(s_[pos_ + 1]) ||
         ((s_[pos_ + 1] == '-' || s_[pos_ + 1] == '+') && pos_ + 2 < s_.size() &&
          IsDigit(s_[pos_ + 2])))) {
      size_t j = pos_ + 1;
      if (s_[j] == '-' || s_[j] == '+') ++j;
      while (j < s_.size() && IsDigit(s_[j])) ++j;
      v *= std::pow(10.0, std::strtod(std::string(s_.substr(pos_ + 1, j - pos_ - 1)).c_str(),
                                      nullptr));
      pos_ = j;
    }
    return v;
  }

  // Deterministic pseudo-random value in [1.2, 2.9) for variable `name` in this trial.
  double VariableValue(const std::string& name) const {
    uint64_t h = Fnv1a64(name);
    h ^= uint64_t(trial_ + 1) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return 1.2 + 1.7 * double(h % 1000003) / 1000003.0;
  }

  // A free variable named `name` plus its subscript, if any ("x_1", "\\rho_{0}" -> "\\rho_0").
  double Variable(std::string name) {
    if (pos_ < s_.size() && s_[pos_] == '_') {
      ++pos_;
      if (pos_ < s_.size() && s_[pos_] == '{') {
        const size_t b = pos_ + 1;
        while (pos_ < s_.size() && s_[pos_] != '}') ++pos_;
        if (pos_ == s_.size()) return Fail();
        name += "_" + std::string(s_.substr(b, pos_ - b));
        ++pos_;
      } else if (pos_ < s_.size()) {
        name += "_" + std::string(1, s_[pos_++]);
      }
    }
    if (vars_ != nullptr) vars_->insert(name);
    return VariableValue(name);
  }

  double Primary() {
    SkipSpace();
    if (!ok_ || pos_ >= s_.size()) return Fail();
    const char c = s_[pos_];
    if (IsDigit(c) || (c == '.' && pos_ + 1 < s_.size() && IsDigit(s_[pos_ + 1]))) {
      return Number();
    }
    if (c == '(' || c == '[') {
      ++pos_;
      const double v = Expr();
      if (!Eat(c == '(' ? ")" : "]")) return Fail();
      return v;
    }
    if (c == '{') return Group();
    if (c == '|') {
      ++pos_;
      const double v = Expr();
      if (!Eat("|")) return Fail();
      return std::abs(v);
    }
    if (IsAlpha(c)) {
      ++pos_;
      return Variable(std::string(1, c));
    }
    if (c != '\\') return Fail();
    const std::string cmd(CommandAt());
    pos_ += 1 + cmd.size();
    if (cmd == "frac") {
      const double a = Group();
      return a / Group();
    }
    if (cmd == "binom") {
      const double n = Group(), k = Group();
      if (k < 0 || k > n || k != std::floor(k) || n != std::floor(n)) return Fail();
      double r = 1.0;
      for (int i = 1; i <= int(k); ++i) r = r * (n - k + i) / i;
      return r;
    }
    if (cmd == "sqrt") {
      double index = 2.0;
      if (Eat("[")) {
        index = Expr();
        if (!Eat("]")) return Fail();
      }
      const double x = Group();
      if (index == 3.0) return std::cbrt(x);
      return std::pow(x, 1.0 / index);
    }
    if (cmd == "pi") return std::numbers::pi;
    if (cmd == "mathrm" || cmd == "operatorname") {  // \mathrm{e}, \mathrm{i}: treat as names
      return Group();
    }
    if (cmd == "sin" || cmd == "cos" || cmd == "tan" || cmd == "ln" || cmd == "exp" ||
        cmd == "log") {
      double base = cmd == "log" ? 10.0 : std::numbers::e;
      if (cmd == "log" && Eat("_")) {
        SkipSpace();
        base = (pos_ < s_.size() && s_[pos_] == '{') ? Group() : Primary();
      }
      const double x = Power();
      if (cmd == "sin") return std::sin(x);
      if (cmd == "cos") return std::cos(x);
      if (cmd == "tan") return std::tan(x);
      if (cmd == "exp") return std::exp(x);
      return std::log(x) / std::log(base);
    }
    if (IsGreekLetter(cmd)) return Variable("\\" + cmd);  // \omega, \rho_0: like letters
    return Fail();  // \infty, \cup, \le, unknown commands: not an arithmetic expression
  }

  std::string_view s_;
  size_t pos_ = 0;
  int trial_;
  std::set<std::string>* vars_;
  bool ok_ = true;
};

// Equal as functions of their free variables: the same values at several pseudo-random points.
bool SymbolicEqual(std::string_view a, std::string_view b) {
  std::set<std::string> vars_a, vars_b;
  constexpr int kTrials = 3;
  bool any = false;
  for (int t = 0; t < kTrials; ++t) {
    const std::optional<double> x = LatexEvaluator(a, t, &vars_a).Run();
    const std::optional<double> y = LatexEvaluator(b, t, &vars_b).Run();
    if (!x || !y) return false;
    if (vars_a.empty() && vars_b.empty()) {
      return std::isfinite(*x) && std::isfinite(*y) && Close(*x, *y, 1e-4);
    }
    if (!std::isfinite(*x) || !std::isfinite(*y)) continue;  // a pole at this point
    if (!Close(*x, *y, 1e-6) && std::abs(*x - *y) > 1e-9) return false;
    any = true;
  }
  return any;
}

// Every element of `a` matched to a distinct equal element of `b` (sizes equal).
bool UnorderedEqual(const std::vector<std::string>& a, const std::vector<std::string>& b,
                    const GradeOptions& o) {
  if (a.size() != b.size()) return false;
  std::vector<bool> used(b.size(), false);
  for (const std::string& x : a) {
    bool found = false;
    for (size_t j = 0; j < b.size() && !found; ++j) {
      if (!used[j] && MathEqual(x, b[j], o)) used[j] = found = true;
    }
    if (!found) return false;
  }
  return true;
}

bool OrderedEqual(const std::vector<std::string>& a, const std::vector<std::string>& b,
                  const GradeOptions& o) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!MathEqual(a[i], b[i], o)) return false;
  }
  return true;
}

// Cells of a pmatrix ("\begin{pmatrix}1&2\\3&4\end{pmatrix}"), row-major; empty when not one.
std::vector<std::vector<std::string>> MatrixCells(std::string_view s) {
  constexpr std::string_view kBegin = "\\begin{pmatrix}", kEnd = "\\end{pmatrix}";
  if (s.substr(0, kBegin.size()) != kBegin || s.size() < kBegin.size() + kEnd.size() ||
      s.substr(s.size() - kEnd.size()) != kEnd) {
    return {};
  }
  std::string body(s.substr(kBegin.size(), s.size() - kBegin.size() - kEnd.size()));
  std::vector<std::vector<std::string>> rows;
  size_t start = 0;
  while (true) {
    const size_t br = body.find("\\\\", start);
    const std::string row = Trim(body.substr(start, br == std::string::npos ? br : br - start));
    if (!row.empty()) rows.push_back(SplitTopLevel(row, '&'));
    if (br == std::string::npos) break;
    start = br + 2;
  }
  return rows;
}

std::string StripChars(std::string s, std::string_view chars) {
  std::erase_if(s, [&](char c) { return chars.find(c) != std::string_view::npos; });
  return s;
}

}  // namespace

std::optional<double> EvaluateLatex(std::string_view expr) {
  std::set<std::string> vars;
  std::optional<double> v = LatexEvaluator(expr, 0, &vars).Run();
  if (!v || !vars.empty()) return std::nullopt;
  return v;
}

bool MathEqual(std::string_view pred_view, std::string_view gold_view, const GradeOptions& o) {
  const std::string pred = Trim(pred_view), gold = Trim(gold_view);
  if (Lower(pred) == Lower(gold)) return true;
  if (pred.empty() || gold.empty()) return false;

  const std::optional<double> pn = ParseNumber(pred), gn = ParseNumber(gold);
  if (pn && gn) {
    // Two integers compare exactly: the reference's 1e-4 tolerance would accept 70001 for 70000
    // and its percent reading 800 for 8.
    if (IsIntegerText(pred) && IsIntegerText(gold) && std::abs(*gn) < 1e15) return *pn == *gn;
    if (Close(*pn, *gn, 1e-4)) return true;
    return o.include_percentage && (Close(*pn, *gn / 100.0, 1e-4) || Close(*pn, *gn * 100.0, 1e-4));
  }

  // One side bracketed and the other not ("(3)" vs "3"): compare without the brackets.
  const auto opens = [](const std::string& s, char a, char b) {
    return s.size() >= 2 && s.front() == a && s.back() == b;
  };
  if ((opens(pred, '[', ']') && gold.front() != '[') ||
      (opens(pred, '(', ')') && gold.front() != '(')) {
    const std::string p = Trim(std::string_view(pred).substr(1, pred.size() - 2));
    if (p.find(',') == std::string::npos && MathEqual(p, gold, o)) return true;
  }
  if (Lower(StripChars(pred, "{}()")) == Lower(StripChars(gold, "{}()"))) return true;

  // Matrices, cell by cell.
  if (auto pm = MatrixCells(pred), gm = MatrixCells(gold); !pm.empty() && !gm.empty()) {
    if (pm.size() != gm.size()) return false;
    for (size_t r = 0; r < pm.size(); ++r) {
      if (!OrderedEqual(pm[r], gm[r], o)) return false;
    }
    return true;
  }

  // Sets {a, b} without regard to order.
  if (opens(pred, '{', '}') && opens(gold, '{', '}') && WrappedWhole(pred) && WrappedWhole(gold)) {
    const auto ps = SplitTopLevel(std::string_view(pred).substr(1, pred.size() - 2));
    const auto gs = SplitTopLevel(std::string_view(gold).substr(1, gold.size() - 2));
    if ((ps.size() > 1 || gs.size() > 1) && UnorderedEqual(ps, gs, o)) return true;
  }

  // Intervals and tuples: the same brackets, element-wise.
  const auto bracketed = [&](const std::string& s) {
    return s.size() >= 2 && (s.front() == '(' || s.front() == '[') &&
           (s.back() == ')' || s.back() == ']') && WrappedWhole(s);
  };
  if (bracketed(pred) && bracketed(gold)) {
    const auto ps = SplitTopLevel(std::string_view(pred).substr(1, pred.size() - 2));
    const auto gs = SplitTopLevel(std::string_view(gold).substr(1, gold.size() - 2));
    if (ps.size() > 1 || gs.size() > 1) {
      return pred.front() == gold.front() && pred.back() == gold.back() && OrderedEqual(ps, gs, o);
    }
  }

  // Bare lists "1, 2" (several answers): order-insensitive.
  {
    const auto ps = SplitTopLevel(pred), gs = SplitTopLevel(gold);
    if (ps.size() > 1 || gs.size() > 1) return UnorderedEqual(ps, gs, o);
  }

  // Equations.
  const auto count_eq = [](const std::string& s) { return std::count(s.begin(), s.end(), '='); };
  if (count_eq(pred) == 1 && count_eq(gold) == 1) {
    const size_t pe = pred.find('='), ge = gold.find('=');
    const std::string p = pred.substr(0, pe) + "-(" + pred.substr(pe + 1) + ")";
    const std::string g = gold.substr(0, ge) + "-(" + gold.substr(ge + 1) + ")";
    if (SymbolicEqual(p, g) || SymbolicEqual("-(" + p + ")", g)) return true;
  } else if (count_eq(pred) == 1 && count_eq(gold) == 0 && Trim(pred.substr(0, pred.find('='))).size() <= 2) {
    if (MathEqual(pred.substr(pred.find('=') + 1), gold, o)) return true;
  } else if (count_eq(gold) == 1 && count_eq(pred) == 0 && Trim(gold.substr(0, gold.find('='))).size() <= 2) {
    if (MathEqual(pred, gold.substr(gold.find('=') + 1), o)) return true;
  }

  if (SymbolicEqual(pred, gold)) return true;
  // A number against an expression of its value, allowing the percent readings.
  if (o.include_percentage && (pn || gn)) {
    const std::optional<double> pv = pn ? pn : EvaluateLatex(pred);
    const std::optional<double> gv = gn ? gn : EvaluateLatex(gold);
    if (pv && gv && (Close(*pv, *gv / 100.0, 1e-4) || Close(*pv, *gv * 100.0, 1e-4))) return true;
  }
  return false;
}

}  // namespace resa
