package tcsign

import (
	"net/url"
	"strconv"
	"testing"
)

// The published test vectors of Tencent Cloud's signature documentation.

func TestTC3Vector(t *testing.T) {
	payload := `{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}`
	if got := SHA256Hex([]byte(payload)); got != "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064" {
		t.Fatalf("payload hash %s", got)
	}
	c := Canonical{
		Method:        "POST",
		URI:           "/",
		Headers:       []string{"content-type:application/json; charset=utf-8", "host:cvm.tencentcloudapi.com"},
		SignedHeaders: "content-type;host",
		PayloadHash:   SHA256Hex([]byte(payload)),
	}
	cr := c.String()
	if got := SHA256Hex([]byte(cr)); got != "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031" {
		t.Fatalf("hashed canonical request %s\n%s", got, cr)
	}
	sts := StringToSign("1551113065", "2019-02-25/cvm/tc3_request", cr)
	key := SigningKey("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm")
	if got := Sign(key, sts); got != "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168" {
		t.Fatalf("signature %s", got)
	}
}

func paramsOf(t *testing.T, q string) []Param {
	t.Helper()
	v, err := url.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	var ps []Param
	for k, vs := range v {
		ps = append(ps, Param{k, vs[0]})
	}
	return ps
}

func TestV1Vectors(t *testing.T) {
	tests := []struct {
		name, method, host, path, query, key, sigMethod, want string
	}{
		{
			"legacy HmacSHA256", "GET", "cvm.api.qcloud.com", "/v2/index.php",
			"Action=DescribeInstances&InstanceIds.0=ins-09dx96dg&Nonce=11886&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&SignatureMethod=HmacSHA256&Timestamp=1465185768",
			"Gu5t9xGARNpq86cd98joQYCN3Cozk1qA", "HmacSHA256", "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s=",
		},
		{
			"legacy HmacSHA1", "GET", "cvm.api.qcloud.com", "/v2/index.php",
			"Action=DescribeInstances&InstanceIds.0=ins-09dx96dg&Nonce=11886&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&SignatureMethod=HmacSHA1&Timestamp=1465185768",
			"Gu5t9xGARNpq86cd98joQYCN3Cozk1qA", "HmacSHA1", "nPVnY6njQmwQ8ciqbPl5Qe+Oru4=",
		},
		{
			"API 3.0 HmacSHA1", "GET", "cvm.tencentcloudapi.com", "/",
			"Action=DescribeInstances&InstanceIds.0=ins-09dx96dg&Limit=20&Nonce=11886&Offset=0&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE&Timestamp=1465185768&Version=2017-03-12",
			"Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "", "EliP9YW3pW28FpsEdkXt/+WcGeI=",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sts := V1StringToSign(tt.method, tt.host, tt.path, paramsOf(t, tt.query))
			if want := tt.method + tt.host + tt.path + "?" + tt.query; sts != want {
				t.Fatalf("string to sign\n got %s\nwant %s", sts, want)
			}
			if got := V1Sign(tt.key, tt.sigMethod, sts); got != tt.want {
				t.Fatalf("signature %s, want %s", got, tt.want)
			}
		})
	}
}

func TestV1UnderscoreAndSignatureExcluded(t *testing.T) {
	got := V1StringToSign("POST", "h:8080", "/v2/index.php", []Param{{"Signature", "x"}, {"b_c", "1 2"}, {"Action", "Encrypt"}})
	if want := "POSTh:8080/v2/index.php?Action=Encrypt&b.c=1 2"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestKeyCache(t *testing.T) {
	var c KeyCache
	for range 2 {
		if got, want := c.SigningKey("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm"), SigningKey("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm"); string(got) != string(want) {
			t.Fatalf("cached key %x, want %x", got, want)
		}
	}
	if string(c.SigningKey("k", "2019-02-25", "cvm")) == string(c.SigningKey("k", "2019-02-26", "cvm")) {
		t.Fatal("two dates share a key")
	}
	for i := range MaxEntries + 10 {
		c.SigningKey("k", "2019-02-25", strconv.Itoa(i))
	}
	if n := len(c.m); n > MaxEntries {
		t.Fatalf("%d entries, bound %d", n, MaxEntries)
	}
	// A hit allocates nothing.
	if n := testing.AllocsPerRun(100, func() { c.SigningKey("k", "2019-02-25", "cvm") }); n != 0 {
		t.Fatalf("a cache hit allocates %.0f times", n)
	}
}

func TestSignPooled(t *testing.T) {
	key := SigningKey("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm")
	want := "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
	sts := "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
	for range 3 { // fresh state, then pooled states
		if got := Sign(key, sts); got != want {
			t.Fatalf("signature %s", got)
		}
	}
	if Sign(key, sts+"x") == want {
		t.Fatal("a pooled state kept its previous input")
	}
	for i := range MaxEntries + 10 { // the table stays bounded and correct
		k := []byte(strconv.Itoa(i))
		if a, b := Sign(k, "m"), Sign(k, "m"); a != b {
			t.Fatal("unstable signature")
		}
	}
	if n := len(hmacSHA256s.m); n > MaxEntries {
		t.Fatalf("%d pooled keys, bound %d", n, MaxEntries)
	}
}

func TestSignCanonicalAllocs(t *testing.T) {
	key := SigningKey("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm")
	for _, canon := range []string{
		"POST\n/\n\ncontent-type:application/json\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
		"GET\n/\nLimit=10&Offset=0\ncontent-type:application/x-www-form-urlencoded\nhost:kms.example:8443\nx-tc-action:encrypt\n\ncontent-type;host;x-tc-action\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"",
	} {
		var sig [64]byte
		SignCanonical(&sig, key, "1551113065", "2019-02-25/cvm/tc3_request", []byte(canon))
		if want := Sign(key, StringToSign("1551113065", "2019-02-25/cvm/tc3_request", canon)); string(sig[:]) != want {
			t.Fatalf("SignCanonical %s, Sign %s", sig[:], want)
		}
	}
	if raceEnabled {
		t.Log("allocations are not counted under -race (sync.Pool drops items); make test counts them in its non-race run")
		return
	}
	canon := []byte("POST\n/\n\ncontent-type:application/json\nhost:kms\n\ncontent-type;host\n00")
	if n := testing.AllocsPerRun(100, func() {
		var sig [64]byte
		SignCanonical(&sig, key, "1551113065", "2019-02-25/cvm/tc3_request", canon)
	}); n > 0 {
		t.Fatalf("SignCanonical: %.0f allocations, want 0", n)
	}
}
