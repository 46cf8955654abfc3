package conflict

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func TestMergeCounter(t *testing.T) {
	tests := []struct {
		cur, delta, want string
	}{
		{"12", "3", "15"},
		{"12", "-3", "9"},
		{"-3", "3", "0"},
		{"3", "-5", "-2"},
		{"", "5", "5"},
		{"", "-5", "-5"},
		{"5", "", "5"},
		{"", "", "0"},
		{"1.50", "2", "3.50"},
		{"2", "1.50", "3.50"},
		{"1.5", "1.5", "3.0"},
		{"0.1", "0.2", "0.3"},
		{"1.05", "-1.05", "0.00"},
		{"-0.5", "0.25", "-0.25"},
		{"0.001", "-0.002", "-0.001"},
		{"-1.5", "-1.5", "-3.0"},
		{"+7", "+1", "8"},
		{"-0", "0", "0"},
		{"007", "0", "7"},
		{".5", "1", "1.5"},
		{"5.", "1", "6"},
		{"-.5", "0", "-0.5"},
		{"9223372036854775807", "1", "9223372036854775808"},
		{"-9223372036854775808", "-1", "-9223372036854775809"},
		{"18446744073709551615", "18446744073709551615", "36893488147419103230"},
		{"123456789012345678901234567890.123456789", "0.000000001", "123456789012345678901234567890.123456790"},
		{"99999999999999999999999999999999999999", "1", "100000000000000000000000000000000000000"},
	}
	for _, tt := range tests {
		got, err := MergeCounter(tt.cur, tt.delta)
		if err != nil || got != tt.want {
			t.Errorf("MergeCounter(%q, %q) = %q, %v; want %q", tt.cur, tt.delta, got, err, tt.want)
		}
	}
}

func TestCounterDelta(t *testing.T) {
	tests := []struct {
		old, new, want string
	}{
		{"10", "15", "5"},
		{"15", "10", "-5"},
		{"", "7", "7"},
		{"7", "", "-7"},
		{"", "", "0"},
		{"1.50", "2", "0.50"},
		{"2", "1.50", "-0.50"},
		{"1.5", "1.50", "0.00"},
		{"-5", "5", "10"},
		{"9223372036854775807", "-9223372036854775808", "-18446744073709551615"},
		{"0.1", "0.3", "0.2"},
	}
	for _, tt := range tests {
		got, err := CounterDelta(tt.old, tt.new)
		if err != nil || got != tt.want {
			t.Errorf("CounterDelta(%q, %q) = %q, %v; want %q", tt.old, tt.new, got, err, tt.want)
			continue
		}
		back, err := MergeCounter(tt.old, got)
		if err != nil {
			t.Errorf("MergeCounter(%q, %q): %v", tt.old, got, err)
			continue
		}
		n, _ := parseDecimal(tt.new)
		o, _ := parseDecimal(tt.old)
		want := decimal{unscaled: n.rescale(max(n.scale, o.scale)), scale: max(n.scale, o.scale)}.String()
		if back != want {
			t.Errorf("MergeCounter(%q, CounterDelta(%q, %q)) = %q, want %q", tt.old, tt.old, tt.new, back, want)
		}
	}
}

func TestCounterErrors(t *testing.T) {
	bad := []struct {
		in   string
		want string
	}{
		{"NaN", "NaN is not a valid counter value"},
		{"nan", "NaN"},
		{"-NaN", "NaN"},
		{"Infinity", "infinity"},
		{"-Infinity", "infinity"},
		{"inf", "infinity"},
		{"1e5", "exponent"},
		{"1.5E-3", "exponent"},
		{"abc", "unexpected character 'a'"},
		{" 1", "unexpected character ' '"},
		{"1 ", "unexpected character ' '"},
		{"1,5", "unexpected character ','"},
		{"1.2.3", "unexpected character '.'"},
		{"--1", "unexpected character '-'"},
		{"+", "no digits"},
		{"-", "no digits"},
		{".", "no digits"},
		{"-.", "no digits"},
		{"0x10", "unexpected character 'x'"},
		{"١", "unexpected character"},
		{strings.Repeat("9", maxIntDigits+1), "digits before the decimal point"},
		{"0." + strings.Repeat("1", maxFracDigits+1), "digits after the decimal point"},
	}
	for _, tt := range bad {
		if _, err := MergeCounter(tt.in, "1"); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "current value") {
			t.Errorf("MergeCounter(%.20q, 1) error = %v, want %q", tt.in, err, tt.want)
		}
		if _, err := MergeCounter("1", tt.in); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "delta") {
			t.Errorf("MergeCounter(1, %.20q) error = %v, want %q", tt.in, err, tt.want)
		}
		if _, err := CounterDelta(tt.in, "1"); err == nil || !strings.Contains(err.Error(), "old value") {
			t.Errorf("CounterDelta(%.20q, 1) error = %v", tt.in, err)
		}
		if _, err := CounterDelta("1", tt.in); err == nil || !strings.Contains(err.Error(), "new value") {
			t.Errorf("CounterDelta(1, %.20q) error = %v", tt.in, err)
		}
	}
	// Huge inputs are clipped in messages.
	if _, err := MergeCounter(strings.Repeat("9", maxIntDigits+1), "1"); err == nil || len(err.Error()) > 200 {
		t.Errorf("error for an overlong value is %d bytes long", len(err.Error()))
	}
	if _, err := ParseVector("eu:" + strings.Repeat("x", 10000)); err == nil || len(err.Error()) > 300 {
		t.Errorf("error for an overlong vector entry is %d bytes long", len(err.Error()))
	}
	// The limits themselves are accepted.
	if _, err := MergeCounter(strings.Repeat("9", maxIntDigits)+"."+strings.Repeat("9", maxFracDigits), "1"); err != nil {
		t.Errorf("value at PostgreSQL's numeric limits rejected: %v", err)
	}
}

// The integer fast path (smallInt) gives exactly what the exact decimal
// path gives, on every input it takes, and leaves every other input to it.
func TestSmallIntegersAddAsDecimalsDo(t *testing.T) {
	bigPath := func(a, b string, negate bool) (string, error) {
		x, err := parseDecimal(a)
		if err != nil {
			return "", err
		}
		y, err := parseDecimal(b)
		if err != nil {
			return "", err
		}
		return add(x, y, negate).String(), nil
	}
	values := []string{"", "0", "-0", "+0", "1", "-1", "+7", "007", "-007", "42",
		"999999999999999999", "-999999999999999999", "1000000000000000000", "-1000000000000000000",
		"9223372036854775807", "-9223372036854775808", "99999999999999999999",
		"1.5", "-0.50", ".5", "5.", "+", "-", "1e3", " 1", "1 ", "NaN", "x"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := rng.Int64N(2_000_000_000_000_000_000) - 1_000_000_000_000_000_000
		values = append(values, strconv.FormatInt(n>>(rng.IntN(60)), 10))
	}
	for _, a := range values {
		for _, b := range values[:40] {
			for _, negate := range []bool{false, true} {
				want, wantErr := bigPath(a, b, negate)
				var got string
				var err error
				if negate {
					got, err = CounterDelta(b, a) // a - b
				} else {
					got, err = MergeCounter(a, b)
				}
				if (err != nil) != (wantErr != nil) || got != want {
					t.Fatalf("%q %v %q: got %q (%v), the exact path gives %q (%v)", a, map[bool]string{false: "+", true: "-"}[negate], b, got, err, want, wantErr)
				}
			}
		}
	}
	for _, s := range []string{"1.5", "1000000000000000000", "-1000000000000000000", "+", "1e3", " 1"} {
		if _, ok := smallInt(s); ok {
			t.Errorf("smallInt took %q", s)
		}
	}
}

func BenchmarkMergeCounterSmall(b *testing.B) {
	for b.Loop() {
		if _, err := MergeCounter("123456", "7"); err != nil {
			b.Fatal(err)
		}
	}
}
