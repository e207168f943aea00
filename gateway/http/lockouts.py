"""Lockouts in the API: addresses refused at connect and terminal ids under attack after wrong
proofs (gateway/native/doorman.py), and an administrator lifting an address's lockout."""

from gateway.http.api import ApiError, Param, Route

ADDRESS = Param("address", "string", "the IP address locked out, as the list shows it")


def list_lockouts(call):
    return {"lockouts": call.gateway.doorman.lockouts()}


def clear_lockout(call):
    address = call.params["address"]
    if not call.gateway.doorman.clear(address):
        raise ApiError(404, f"{address} is not locked out and made no wrong proofs lately")
    return {"cleared": address}


ROUTES = [
    Route("GET", "/api/lockouts", list_lockouts, "Addresses locked out and terminal ids under attack after wrong proofs", returns="Lockouts"),
    Route("DELETE", "/api/lockouts/{address}", clear_lockout, "Lift an address's lockout and forget its wrong proofs", (ADDRESS,),
          returns="Cleared", errors={404: "the address is neither locked out nor counted"}),
]
