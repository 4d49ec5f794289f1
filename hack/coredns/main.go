// Command coredns is CoreDNS with only the plugins the real test node's Corefile uses
// (tests/support/realnode_config.py: bind, errors, ready, kubernetes, cache, template).
//
// CoreDNS' own main package links its whole default plugin set, cloud DNS backends (route53, azure,
// clouddns) and their SDKs included, which made it one of the slowest cold builds of `make test`. The
// directive order stays CoreDNS' own (dnsserver.Directives, generated from its plugin.cfg): a plugin left
// out here is simply never registered, and a Corefile naming one fails to load, saying which.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver" // the "dns" server type
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
