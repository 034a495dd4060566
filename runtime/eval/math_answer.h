// Answers of math problems: extraction from a model's output, normalisation, and grading by
// mathematical equivalence. Modelled on the behaviour of the Qwen2.5-Math evaluator that the ReSA
// paper scores with (parser.py: extract_answer / strip_string, grader.py: math_equal), written
// from scratch. There is no computer-algebra system here: expressions are compared by careful
// normalisation, exact numbers, and numeric evaluation of LaTeX expressions (with variables set
// to several pseudo-random values), which decides equivalence of the answers these datasets have
// (numbers, fractions, radicals, pi, polynomials, intervals, tuples, sets, equations).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace resa {

// Content of the last \boxed{...} (or \fbox{...}) in `text`, braces balanced; for "\boxed 5"
// (no brace) the text up to the next '$'. nullopt when there is no box or its brace never closes.
std::optional<std::string> LastBoxed(std::string_view text);

// The answer a model gave in `output`, normalised with NormalizeAnswer. Fallbacks in the
// reference evaluator's order: "final answer is $X$. I hope" (Minerva style), the last \boxed{},
// "the answer is X", "final answer is X", then the last number in the text. Units are kept for
// minerva_math (its answers carry meaningful units), stripped for every other dataset.
std::string ExtractAnswer(std::string_view output, std::string_view dataset);

// strip_string: removes presentation (\left \right \! spaces, $, \text{} wrappers, trailing
// \text{units} and unit words, degrees, %, "x=" prefixes, \mbox), canonicalises \dfrac/\tfrac to
// \frac, \frac12 to \frac{1}{2}, a/b to \frac{a}{b}, \sqrt2 to \sqrt{2}, "27.0" to "27".
std::string NormalizeAnswer(std::string_view answer, bool skip_units = false);

struct GradeOptions {
  // The reference accepts a number equal to the gold, gold/100 or gold*100 (percent answers).
  // Not applied between two integers, which compare exactly.
  bool include_percentage = true;
};

// Whether a normalised prediction equals a normalised gold answer (math_equal). Integers compare
// exactly, other numbers with a relative tolerance of 1e-4; intervals and tuples element-wise (bracket kinds must
// match); sets and bare comma lists without regard to order; equations "a=b" as a-b = +-(c-d);
// "x=3" against "3" by its right-hand side; anything else by numeric evaluation of both sides.
bool MathEqual(std::string_view pred, std::string_view gold, const GradeOptions& options = {});

// Evaluates a LaTeX expression with no free variables (\frac, \sqrt, ^, \pi, \cdot, implicit
// products, \sin ...). nullopt when it does not parse or has a variable. Exposed for tests.
std::optional<double> EvaluateLatex(std::string_view expr);

}  // namespace resa
