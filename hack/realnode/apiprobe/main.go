// apiprobe: the real test node's in-cluster API client. From inside a pod it calls the API server the way
// client libraries do in-cluster: the address from KUBERNETES_SERVICE_HOST/PORT (the `kubernetes`
// Service) or -server, the pod's ServiceAccount token as bearer, the server certificate verified against
// the ServiceAccount's ca.crt. For each path it prints "PATH STATUS" and the start of the body.
// (busybox wget's TLS cannot talk to the API server: no cipher suite in common.)
// An argument that is a whole http:// URL is fetched as is, without the token: a plain HTTP client that
// resolves names with Go's own resolver (static busybox's wget cannot: static glibc has no NSS).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	server := flag.String("server", "", "API server URL (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	bodyBytes := flag.Int("body", 300, "how many bytes of each body to print")
	flag.Parse()
	if *server == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			fail("KUBERNETES_SERVICE_HOST/PORT not set and no -server")
		}
		*server = "https://" + net.JoinHostPort(host, port)
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fail("reading the ServiceAccount token: %v", err)
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fail("reading the ServiceAccount CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("no certificate in %s/ca.crt", saDir)
	}
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	paths := flag.Args()
	if len(paths) == 0 {
		paths = []string{"/api"}
	}
	for _, path := range paths {
		url := strings.TrimSuffix(*server, "/") + path
		plain := strings.HasPrefix(path, "http://")
		if plain {
			url = path
		}
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			fail("%s: %v", path, err)
		}
		if !plain {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		}
		resp, err := client.Do(req)
		if err != nil {
			fail("%s: %v", path, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, int64(*bodyBytes)))
		resp.Body.Close()
		fmt.Printf("%s %d %s\n", path, resp.StatusCode, strings.ReplaceAll(string(body), "\n", " "))
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "apiprobe: "+format+"\n", args...)
	os.Exit(1)
}
