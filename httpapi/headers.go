package httpapi

import "net/http"

// hget returns the first value of the header named k, which must be in
// canonical form ("X-Tc-Action"): unlike http.Header.Get it does not
// canonicalise k, which allocates for names such as "X-TC-Action". Both
// HTTP servers store received names canonicalised.
func hget(h http.Header, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// signedHeader returns the value of a header named in TC3's SignedHeaders
// (lower case), without allocating for the names Tencent clients sign.
func signedHeader(h http.Header, lower string) string {
	switch lower {
	case "content-type":
		return hget(h, "Content-Type")
	case "x-tc-action":
		return hget(h, "X-Tc-Action")
	case "x-tc-timestamp":
		return hget(h, "X-Tc-Timestamp")
	case "x-tc-version":
		return hget(h, "X-Tc-Version")
	case "x-tc-region":
		return hget(h, "X-Tc-Region")
	case "x-tc-language":
		return hget(h, "X-Tc-Language")
	case "x-tc-requestclient":
		return hget(h, "X-Tc-Requestclient")
	}
	return h.Get(lower)
}
