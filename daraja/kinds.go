package daraja

// KindStrings is ks as plain strings (for logs, JSON and subjects).
func KindStrings(ks []Kind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}
