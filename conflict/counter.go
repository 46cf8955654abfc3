package conflict

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// PostgreSQL numeric limits: digits before and after the decimal point.
const (
	maxIntDigits  = 131072
	maxFracDigits = 16383
)

// decimal is an exact decimal number: unscaled × 10^-scale.
type decimal struct {
	unscaled *big.Int
	scale    int
}

var bigTen = big.NewInt(10)

// parseDecimal parses PostgreSQL text of an integer or numeric value:
// [+-]digits[.digits] (".5" and "5." are accepted too). The scale is the
// number of fraction digits as written. The empty string is 0 (a NULL
// counter counts as 0). NaN, infinities, exponents and spaces are rejected.
func parseDecimal(s string) (decimal, error) {
	if s == "" {
		return decimal{unscaled: new(big.Int)}, nil
	}
	body := s
	neg := false
	if body[0] == '+' || body[0] == '-' {
		neg = body[0] == '-'
		body = body[1:]
	}
	switch strings.ToLower(body) {
	case "nan":
		return decimal{}, errors.New("NaN is not a valid counter value")
	case "infinity", "inf":
		return decimal{}, errors.New("infinity is not a valid counter value")
	}
	intPart, fracPart, _ := strings.Cut(body, ".")
	if intPart == "" && fracPart == "" {
		return decimal{}, errors.New("no digits")
	}
	for _, part := range [...]string{intPart, fracPart} {
		for i := 0; i < len(part); i++ {
			if c := part[i]; c < '0' || c > '9' {
				if c == 'e' || c == 'E' {
					return decimal{}, errors.New("exponent notation is not supported")
				}
				return decimal{}, fmt.Errorf("unexpected character %q", c)
			}
		}
	}
	if len(intPart) > maxIntDigits {
		return decimal{}, fmt.Errorf("more than %d digits before the decimal point", maxIntDigits)
	}
	if len(fracPart) > maxFracDigits {
		return decimal{}, fmt.Errorf("more than %d digits after the decimal point", maxFracDigits)
	}
	n, ok := new(big.Int).SetString(intPart+fracPart, 10)
	if !ok { // cannot happen: only digits, at least one
		return decimal{}, errors.New("not a number")
	}
	if neg {
		n.Neg(n)
	}
	return decimal{unscaled: n, scale: len(fracPart)}, nil
}

// rescale returns d's unscaled value at a scale of at least d.scale.
func (d decimal) rescale(scale int) *big.Int {
	if scale == d.scale {
		return new(big.Int).Set(d.unscaled)
	}
	f := new(big.Int).Exp(bigTen, big.NewInt(int64(scale-d.scale)), nil)
	return f.Mul(f, d.unscaled)
}

// add returns a+b (or a-b when negate) at the larger of the two scales.
func add(a, b decimal, negate bool) decimal {
	scale := max(a.scale, b.scale)
	x, y := a.rescale(scale), b.rescale(scale)
	if negate {
		x.Sub(x, y)
	} else {
		x.Add(x, y)
	}
	return decimal{unscaled: x, scale: scale}
}

// String returns canonical PostgreSQL text: no plus sign, no leading zeros,
// exactly scale fraction digits, and no minus sign on zero.
func (d decimal) String() string {
	digits := new(big.Int).Abs(d.unscaled).String()
	if d.scale > 0 {
		if len(digits) <= d.scale {
			digits = strings.Repeat("0", d.scale-len(digits)+1) + digits
		}
		digits = digits[:len(digits)-d.scale] + "." + digits[len(digits)-d.scale:]
	}
	if d.unscaled.Sign() < 0 {
		return "-" + digits
	}
	return digits
}

// MergeCounter adds a delta to a counter value. Both are PostgreSQL text of
// integer or numeric types ("12", "-3", "1.50"); NaN, infinities and
// exponents are errors. The arithmetic is exact decimal (math/big), and the
// result is canonical text at the larger of the two scales ("1.50"+"2" =
// "3.50"). An empty string means 0 (a NULL counter counts as 0). The column's
// type is not known here: a result too large for an integer column is left
// for PostgreSQL to reject.
func MergeCounter(current, delta string) (string, error) {
	if c, ok := smallInt(current); ok {
		if d, ok := smallInt(delta); ok {
			return strconv.FormatInt(c+d, 10), nil
		}
	}
	c, err := parseDecimal(current)
	if err != nil {
		return "", fmt.Errorf("counter: current value %q: %w", clip(current), err)
	}
	d, err := parseDecimal(delta)
	if err != nil {
		return "", fmt.Errorf("counter: delta %q: %w", clip(delta), err)
	}
	return add(c, d, false).String(), nil
}

// CounterDelta returns newValue - oldValue, with the same rules as
// MergeCounter (an empty string, such as a NULL old or new value, is 0).
// MergeCounter(old, CounterDelta(old, new)) equals new, at the larger of
// the two scales.
func CounterDelta(oldValue, newValue string) (string, error) {
	if o, ok := smallInt(oldValue); ok {
		if n, ok := smallInt(newValue); ok {
			return strconv.FormatInt(n-o, 10), nil
		}
	}
	o, err := parseDecimal(oldValue)
	if err != nil {
		return "", fmt.Errorf("counter: old value %q: %w", clip(oldValue), err)
	}
	n, err := parseDecimal(newValue)
	if err != nil {
		return "", fmt.Errorf("counter: new value %q: %w", clip(newValue), err)
	}
	return add(n, o, true).String(), nil
}

// smallIntDigits bounds the integers smallInt takes: the sum or difference
// of two of them fits in an int64 (|x| < 10^18, and 2·10^18 < 2^63).
const smallIntDigits = 18

// smallInt parses s as parseDecimal would an integer ([+-]digits, "" is 0)
// of at most smallIntDigits digits: the counters of rate limits and totals,
// added without math/big. Anything else (a fraction, more digits, a value
// parseDecimal rejects) is not ok, and takes the exact decimal path.
func smallInt(s string) (int64, bool) {
	if s == "" {
		return 0, true
	}
	digits := s
	if digits[0] == '+' || digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) > smallIntDigits {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64) // digits only, after a sign
	return n, err == nil
}
