//! Approximate geography of every ISO 3166-1 alpha-2 country (and `XK`, Kosovo).
//!
//! Each entry holds the country's centroid, the radius of a disc of the same area
//! (√(area/π), a rough measure of how far inside the country a traveller can be from its
//! centre) and its land neighbours. The numbers are approximate by design: they only need to
//! tell "a flight away" from "across the border".
//!
//! Sources: centroids from Google's public DSPL `countries.csv` (CC BY 4.0), with a handful
//! of codes it lacks (AX, BL, BQ, CW, MF, SS, SX, UM) filled in by hand; areas and land
//! neighbours from GeoNames `countryInfo.txt` (CC BY 4.0).

/// One country.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Country {
    /// ISO 3166-1 alpha-2 code, uppercase ASCII.
    pub code: [u8; 2],
    /// Latitude of the centroid, degrees north.
    pub lat: f64,
    /// Longitude of the centroid, degrees east.
    pub lon: f64,
    /// Radius of a disc with the country's area, in kilometres (0 for specks).
    pub radius_km: u16,
    /// Codes of the countries it shares a land border with, space-separated.
    pub neighbours: &'static str,
}

impl Country {
    /// The code as text.
    pub fn code_str(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("??")
    }

    /// True when the two countries share a land border (either side listing the other).
    pub fn borders(&self, other: &Country) -> bool {
        let lists =
            |a: &Country, b: &Country| a.neighbours.split(' ').any(|n| n.as_bytes() == b.code);
        lists(self, other) || lists(other, self)
    }
}

/// Great-circle distance between two points, in kilometres (haversine, mean Earth radius).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lon2 - lon1).to_radians();
    let a = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// The country with ISO code `code` (two ASCII letters, any case).
pub fn lookup(code: &str) -> Option<&'static Country> {
    let bytes: [u8; 2] = code.as_bytes().try_into().ok()?;
    lookup_code(bytes.map(|b| b.to_ascii_uppercase()))
}

/// The country with code `code` (uppercase ASCII bytes).
pub fn lookup_code(code: [u8; 2]) -> Option<&'static Country> {
    COUNTRIES
        .binary_search_by(|c| c.code.cmp(&code))
        .ok()
        .and_then(|i| COUNTRIES.get(i))
}

const fn c(
    code: &[u8; 2],
    lat: f64,
    lon: f64,
    radius_km: u16,
    neighbours: &'static str,
) -> Country {
    Country {
        code: *code,
        lat,
        lon,
        radius_km,
        neighbours,
    }
}

/// All countries, sorted by code.
pub static COUNTRIES: &[Country] = &[
    c(b"AD", 42.55, 1.60, 12, "ES FR"),
    c(b"AE", 23.42, 53.85, 162, "OM SA"),
    c(b"AF", 33.94, 67.71, 454, "CN IR PK TJ TM UZ"),
    c(b"AG", 17.06, -61.80, 12, ""),
    c(b"AI", 18.22, -63.07, 6, ""),
    c(b"AL", 41.15, 20.17, 96, "GR ME MK RS XK"),
    c(b"AM", 40.07, 45.04, 97, "AZ GE IR TR"),
    c(b"AO", -11.20, 17.87, 630, "CD CG NA ZM"),
    c(b"AQ", -75.25, -0.07, 2111, ""),
    c(b"AR", -38.42, -63.62, 938, "BO BR CL PY UY"),
    c(b"AS", -14.27, -170.13, 8, ""),
    c(b"AT", 47.52, 14.55, 163, "CH CZ DE HU IT LI SI SK"),
    c(b"AU", -25.27, 133.78, 1564, ""),
    c(b"AW", 12.52, -69.97, 8, ""),
    c(b"AX", 60.18, 19.92, 22, ""),
    c(b"AZ", 40.14, 47.58, 166, "AM GE IR RU TR"),
    c(b"BA", 43.92, 17.68, 128, "HR ME RS"),
    c(b"BB", 13.19, -59.54, 12, ""),
    c(b"BD", 23.68, 90.36, 214, "IN MM"),
    c(b"BE", 50.50, 4.47, 99, "DE FR LU NL"),
    c(b"BF", 12.24, -1.56, 295, "BJ CI GH ML NE TG"),
    c(b"BG", 42.73, 25.49, 188, "GR MK RO RS TR"),
    c(b"BH", 25.93, 50.64, 15, ""),
    c(b"BI", -3.37, 29.92, 94, "CD RW TZ"),
    c(b"BJ", 9.31, 2.32, 189, "BF NE NG TG"),
    c(b"BL", 17.90, -62.83, 3, ""),
    c(b"BM", 32.32, -64.76, 4, ""),
    c(b"BN", 4.54, 114.73, 43, "MY"),
    c(b"BO", -16.29, -63.59, 591, "AR BR CL PE PY"),
    c(b"BQ", 12.20, -68.25, 10, ""),
    c(b"BR", -14.24, -51.93, 1646, "AR BO CO GF GY PE PY SR UY VE"),
    c(b"BS", 25.03, -77.40, 67, ""),
    c(b"BT", 27.51, 90.43, 122, "CN IN"),
    c(b"BV", -54.42, 3.41, 4, ""),
    c(b"BW", -22.33, 24.68, 437, "NA ZA ZW"),
    c(b"BY", 53.71, 27.95, 257, "LT LV PL RU UA"),
    c(b"BZ", 17.19, -88.50, 86, "GT MX"),
    c(b"CA", 56.13, -106.35, 1783, "US"),
    c(b"CC", -12.16, 96.87, 2, ""),
    c(b"CD", -4.04, 21.76, 864, "AO BI CF CG RW SS TZ UG ZM"),
    c(b"CF", 6.61, 20.94, 445, "CD CG CM SD SS TD"),
    c(b"CG", -0.23, 15.83, 330, "AO CD CF CM GA"),
    c(b"CH", 46.82, 8.23, 115, "AT DE FR IT LI"),
    c(b"CI", 7.54, -5.55, 320, "BF GH GN LR ML"),
    c(b"CK", -21.24, -159.78, 9, ""),
    c(b"CL", -35.68, -71.54, 491, "AR BO PE"),
    c(b"CM", 7.37, 12.35, 389, "CF CG GA GQ NG TD"),
    c(
        b"CN",
        35.86,
        104.20,
        1748,
        "AF BT IN KG KP KZ LA MM MN NP PK RU TJ VN",
    ),
    c(b"CO", 4.57, -74.30, 602, "BR EC PA PE VE"),
    c(b"CR", 9.75, -83.75, 128, "NI PA"),
    c(b"CU", 21.52, -77.78, 188, "US"),
    c(b"CV", 16.00, -24.01, 36, ""),
    c(b"CW", 12.18, -68.98, 12, ""),
    c(b"CX", -10.45, 105.69, 7, ""),
    c(b"CY", 35.13, 33.43, 54, ""),
    c(b"CZ", 49.82, 15.47, 158, "AT DE PL SK"),
    c(b"DE", 51.17, 10.45, 337, "AT BE CH CZ DK FR LU NL PL"),
    c(b"DJ", 11.83, 42.59, 86, "ER ET SO"),
    c(b"DK", 56.26, 9.50, 117, "DE"),
    c(b"DM", 15.41, -61.37, 15, ""),
    c(b"DO", 18.74, -70.16, 125, "HT"),
    c(b"DZ", 28.03, 1.66, 871, "EH LY MA ML MR NE TN"),
    c(b"EC", -1.83, -78.18, 300, "CO PE"),
    c(b"EE", 58.60, 25.01, 120, "LV RU"),
    c(b"EG", 26.82, 30.80, 565, "IL LY PS SD"),
    c(b"EH", 24.22, -12.89, 291, "DZ MA MR"),
    c(b"ER", 15.18, 39.78, 197, "DJ ET SD"),
    c(b"ES", 40.46, -3.75, 401, "AD FR GI MA PT"),
    c(b"ET", 9.14, 40.49, 599, "DJ ER KE SD SO SS"),
    c(b"FI", 61.92, 25.75, 328, "NO RU SE"),
    c(b"FJ", -16.58, 179.41, 76, ""),
    c(b"FK", -51.80, -59.52, 62, ""),
    c(b"FM", 7.43, 150.55, 15, ""),
    c(b"FO", 61.89, -6.91, 21, ""),
    c(b"FR", 46.23, 2.21, 417, "AD BE CH DE ES IT LU MC"),
    c(b"GA", -0.80, 11.61, 292, "CG CM GQ"),
    c(b"GB", 55.38, -3.44, 279, "IE"),
    c(b"GD", 12.26, -61.60, 10, ""),
    c(b"GE", 42.32, 43.36, 149, "AM AZ RU TR"),
    c(b"GF", 3.93, -53.13, 170, "BR SR"),
    c(b"GG", 49.47, -2.59, 5, ""),
    c(b"GH", 7.95, -1.02, 276, "BF CI TG"),
    c(b"GI", 36.14, -5.35, 1, "ES"),
    c(b"GL", 71.71, -42.60, 830, ""),
    c(b"GM", 13.44, -15.31, 60, "SN"),
    c(b"GN", 9.95, -9.70, 280, "CI GW LR ML SL SN"),
    c(b"GP", 17.00, -62.07, 24, ""),
    c(b"GQ", 1.65, 10.27, 94, "CM GA"),
    c(b"GR", 39.07, 21.82, 205, "AL BG MK TR"),
    c(b"GS", -54.43, -36.59, 35, ""),
    c(b"GT", 15.78, -90.23, 186, "BZ HN MX SV"),
    c(b"GU", 13.44, 144.79, 13, ""),
    c(b"GW", 11.80, -15.18, 107, "GN SN"),
    c(b"GY", 4.86, -58.93, 262, "BR SR VE"),
    c(b"HK", 22.40, 114.11, 19, ""),
    c(b"HM", -53.08, 73.50, 11, ""),
    c(b"HN", 15.20, -86.24, 189, "GT NI SV"),
    c(b"HR", 45.10, 15.20, 134, "BA HU ME RS SI"),
    c(b"HT", 18.97, -72.29, 94, "DO"),
    c(b"HU", 47.16, 19.50, 172, "AT HR RO RS SI SK UA"),
    c(b"ID", -0.79, 113.92, 782, "MY PG TL"),
    c(b"IE", 53.41, -8.24, 150, "GB"),
    c(b"IL", 31.05, 34.85, 81, "EG JO LB PS SY"),
    c(b"IM", 54.24, -4.55, 13, ""),
    c(b"IN", 20.59, 78.96, 1023, "BD BT CN MM NP PK"),
    c(b"IO", -6.34, 71.88, 4, ""),
    c(b"IQ", 33.22, 43.68, 373, "IR JO KW SA SY TR"),
    c(b"IR", 32.43, 53.69, 724, "AF AM AZ IQ PK TM TR"),
    c(b"IS", 64.96, -19.02, 181, ""),
    c(b"IT", 41.87, 12.57, 310, "AT CH FR SI SM VA"),
    c(b"JE", 49.21, -2.13, 6, ""),
    c(b"JM", 18.11, -77.30, 59, ""),
    c(b"JO", 30.59, 36.24, 171, "IL IQ PS SA SY"),
    c(b"JP", 36.20, 138.25, 347, ""),
    c(b"KE", -0.02, 37.91, 431, "ET SO SS TZ UG"),
    c(b"KG", 41.20, 74.77, 251, "CN KZ TJ UZ"),
    c(b"KH", 12.57, 104.99, 240, "LA TH VN"),
    c(b"KI", -3.37, -168.73, 16, ""),
    c(b"KM", -11.88, 43.87, 26, ""),
    c(b"KN", 17.36, -62.78, 9, ""),
    c(b"KP", 40.34, 127.51, 196, "CN KR RU"),
    c(b"KR", 35.91, 127.77, 177, "KP"),
    c(b"KW", 29.31, 47.48, 75, "IQ SA"),
    c(b"KY", 19.51, -80.57, 9, ""),
    c(b"KZ", 48.02, 66.92, 930, "CN KG RU TM UZ"),
    c(b"LA", 19.86, 102.50, 275, "CN KH MM TH VN"),
    c(b"LB", 33.85, 35.86, 58, "IL SY"),
    c(b"LC", 13.91, -60.98, 14, ""),
    c(b"LI", 47.17, 9.56, 7, "AT CH"),
    c(b"LK", 7.87, 80.77, 145, ""),
    c(b"LR", 6.43, -9.43, 188, "CI GN SL"),
    c(b"LS", -29.61, 28.23, 98, "ZA"),
    c(b"LT", 55.17, 23.88, 144, "BY LV PL RU"),
    c(b"LU", 49.82, 6.13, 29, "BE DE FR"),
    c(b"LV", 56.88, 24.60, 143, "BY EE LT RU"),
    c(b"LY", 26.34, 17.23, 748, "DZ EG NE SD TD TN"),
    c(b"MA", 31.79, -7.09, 377, "DZ EH ES"),
    c(b"MC", 43.75, 7.41, 1, "FR"),
    c(b"MD", 47.41, 28.37, 104, "RO UA"),
    c(b"ME", 42.71, 19.37, 67, "AL BA HR RS XK"),
    c(b"MF", 18.07, -63.05, 4, "SX"),
    c(b"MG", -18.77, 46.87, 432, ""),
    c(b"MH", 7.13, 171.18, 8, ""),
    c(b"MK", 41.61, 21.75, 90, "AL BG GR RS XK"),
    c(b"ML", 17.57, -4.00, 628, "BF CI DZ GN MR NE SN"),
    c(b"MM", 21.91, 95.96, 465, "BD CN IN LA TH"),
    c(b"MN", 46.86, 103.85, 706, "CN RU"),
    c(b"MO", 22.20, 113.54, 9, ""),
    c(b"MP", 17.33, 145.38, 12, ""),
    c(b"MQ", 14.64, -61.02, 19, ""),
    c(b"MR", 21.01, -10.94, 573, "DZ EH ML SN"),
    c(b"MS", 16.74, -62.19, 6, ""),
    c(b"MT", 35.94, 14.38, 10, ""),
    c(b"MU", -20.35, 57.55, 25, ""),
    c(b"MV", 3.20, 73.22, 10, ""),
    c(b"MW", -13.25, 34.30, 194, "MZ TZ ZM"),
    c(b"MX", 23.63, -102.55, 792, "BZ GT US"),
    c(b"MY", 4.21, 101.98, 324, "BN ID TH"),
    c(b"MZ", -18.67, 35.53, 505, "MW SZ TZ ZA ZM ZW"),
    c(b"NA", -22.96, 18.49, 513, "AO BW ZA ZM"),
    c(b"NC", -20.90, 165.62, 78, ""),
    c(b"NE", 17.61, 8.08, 635, "BF BJ DZ LY ML NG TD"),
    c(b"NF", -29.04, 167.95, 3, ""),
    c(b"NG", 9.08, 8.68, 542, "BJ CM NE TD"),
    c(b"NI", 12.87, -85.21, 203, "CR HN"),
    c(b"NL", 52.13, 5.29, 115, "BE DE"),
    c(b"NO", 60.47, 8.47, 321, "FI RU SE"),
    c(b"NP", 28.39, 84.12, 212, "CN IN"),
    c(b"NR", -0.52, 166.93, 3, ""),
    c(b"NU", -19.05, -169.87, 9, ""),
    c(b"NZ", -40.90, 174.89, 292, ""),
    c(b"OM", 21.51, 55.92, 260, "AE SA YE"),
    c(b"PA", 8.54, -80.78, 158, "CO CR"),
    c(b"PE", -9.19, -75.02, 640, "BO BR CL CO EC"),
    c(b"PF", -17.68, -149.41, 36, ""),
    c(b"PG", -6.31, 143.96, 384, "ID"),
    c(b"PH", 12.88, 121.77, 309, ""),
    c(b"PK", 30.38, 69.35, 506, "AF CN IN IR"),
    c(b"PL", 51.92, 19.15, 315, "BY CZ DE LT RU SK UA"),
    c(b"PM", 46.94, -56.27, 9, ""),
    c(b"PN", -24.70, -127.44, 4, ""),
    c(b"PR", 18.22, -66.59, 54, ""),
    c(b"PS", 31.95, 35.23, 44, "EG IL JO"),
    c(b"PT", 39.40, -8.22, 171, "ES"),
    c(b"PW", 7.51, 134.58, 12, ""),
    c(b"PY", -23.44, -58.44, 360, "AR BO BR"),
    c(b"QA", 25.35, 51.18, 60, "SA"),
    c(b"RE", -21.12, 55.54, 28, ""),
    c(b"RO", 45.94, 24.97, 275, "BG HU MD RS UA"),
    c(b"RS", 44.02, 21.01, 168, "AL BA BG HR HU ME MK RO XK"),
    c(
        b"RU",
        61.52,
        105.32,
        2333,
        "AZ BY CN EE FI GE KP KZ LT LV MN NO PL UA",
    ),
    c(b"RW", -1.94, 29.87, 92, "BI CD TZ UG"),
    c(b"SA", 23.89, 45.08, 790, "AE IQ JO KW OM QA YE"),
    c(b"SB", -9.65, 160.16, 95, ""),
    c(b"SC", -4.68, 55.49, 12, ""),
    c(b"SD", 12.86, 30.22, 770, "CF EG ER ET LY SS TD"),
    c(b"SE", 60.13, 18.64, 378, "FI NO"),
    c(b"SG", 1.35, 103.82, 15, ""),
    c(b"SH", -24.14, -10.03, 11, ""),
    c(b"SI", 46.15, 15.00, 80, "AT HR HU IT"),
    c(b"SJ", 77.55, 23.67, 141, ""),
    c(b"SK", 48.67, 19.70, 125, "AT CZ HU PL UA"),
    c(b"SL", 8.46, -11.78, 151, "GN LR"),
    c(b"SM", 43.94, 12.46, 4, "IT"),
    c(b"SN", 14.50, -14.45, 250, "GM GN GW ML MR"),
    c(b"SO", 5.15, 46.20, 451, "DJ ET KE"),
    c(b"SR", 3.92, -56.03, 228, "BR GF GY"),
    c(b"SS", 7.06, 30.96, 453, "CD CF ET KE SD UG"),
    c(b"ST", 0.19, 6.61, 18, ""),
    c(b"SV", 13.79, -88.90, 82, "GT HN"),
    c(b"SX", 18.04, -63.05, 3, "MF"),
    c(b"SY", 34.80, 39.00, 243, "IL IQ JO LB TR"),
    c(b"SZ", -26.52, 31.47, 74, "MZ ZA"),
    c(b"TC", 21.69, -71.80, 12, ""),
    c(b"TD", 15.45, 18.73, 639, "CF CM LY NE NG SD"),
    c(b"TF", -49.28, 69.35, 50, ""),
    c(b"TG", 8.62, 0.82, 134, "BF BJ GH"),
    c(b"TH", 15.87, 100.99, 404, "KH LA MM MY"),
    c(b"TJ", 38.86, 71.28, 213, "AF CN KG UZ"),
    c(b"TK", -8.97, -171.86, 2, ""),
    c(b"TL", -8.87, 125.73, 69, "ID"),
    c(b"TM", 38.97, 59.56, 394, "AF IR KZ UZ"),
    c(b"TN", 33.89, 9.54, 228, "DZ LY"),
    c(b"TO", -21.18, -175.20, 15, ""),
    c(b"TR", 38.96, 35.24, 498, "AM AZ BG GE GR IQ IR SY"),
    c(b"TT", 10.69, -61.22, 40, ""),
    c(b"TV", -7.11, 177.65, 3, ""),
    c(b"TW", 23.70, 120.96, 107, ""),
    c(b"TZ", -6.37, 34.89, 548, "BI CD KE MW MZ RW UG ZM"),
    c(b"UA", 48.38, 31.17, 438, "BY HU MD PL RO RU SK"),
    c(b"UG", 1.37, 32.29, 274, "CD KE RW SS TZ"),
    c(b"UM", 19.28, 166.64, 0, ""),
    c(b"US", 37.09, -95.71, 1751, "CA CU MX"),
    c(b"UY", -32.52, -55.77, 237, "AR BR"),
    c(b"UZ", 41.38, 64.59, 377, "AF KG KZ TJ TM"),
    c(b"VA", 41.90, 12.45, 0, "IT"),
    c(b"VC", 12.98, -61.29, 11, ""),
    c(b"VE", 6.42, -66.59, 539, "BR CO GY"),
    c(b"VG", 18.42, -64.64, 7, ""),
    c(b"VI", 18.34, -64.90, 11, ""),
    c(b"VN", 14.06, 108.28, 324, "CN KH LA"),
    c(b"VU", -15.38, 166.96, 62, ""),
    c(b"WF", -13.77, -177.16, 9, ""),
    c(b"WS", -13.76, -172.10, 31, ""),
    c(b"XK", 42.60, 20.90, 59, "AL ME MK RS"),
    c(b"YE", 15.55, 48.52, 410, "OM SA"),
    c(b"YT", -12.83, 45.17, 11, ""),
    c(b"ZA", -30.56, 22.94, 623, "BW LS MZ NA SZ ZW"),
    c(b"ZM", -13.13, 27.85, 489, "AO CD MW MZ NA TZ ZW"),
    c(b"ZW", -19.02, 29.15, 353, "BW MZ ZA ZM"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code ISO 3166-1 assigns (2024).
    const ISO_3166_1: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG \
        BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV \
        CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH \
        GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM \
        JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG \
        MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM \
        PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK \
        SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM \
        US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

    #[test]
    fn table_covers_every_iso_code_sorted_and_unique() {
        let iso: Vec<&str> = ISO_3166_1.split_whitespace().collect();
        assert_eq!(iso.len(), 249);
        for code in &iso {
            assert!(lookup(code).is_some(), "{code} missing");
        }
        assert!(lookup("XK").is_some(), "Kosovo is used by CDNs");
        assert_eq!(COUNTRIES.len(), 250);
        assert!(
            COUNTRIES.windows(2).all(|w| w[0].code < w[1].code),
            "sorted and unique (binary search depends on it)"
        );
    }

    #[test]
    fn table_values_are_in_range_and_borders_are_symmetric() {
        for c in COUNTRIES {
            assert!(c.code.iter().all(u8::is_ascii_uppercase), "{:?}", c.code);
            assert!((-90.0..=90.0).contains(&c.lat), "{}", c.code_str());
            assert!((-180.0..=180.0).contains(&c.lon), "{}", c.code_str());
            assert!(c.radius_km < 2500, "{}", c.code_str());
            for n in c.neighbours.split_whitespace() {
                let other =
                    lookup(n).unwrap_or_else(|| panic!("{} lists unknown {n}", c.code_str()));
                assert!(
                    other
                        .neighbours
                        .split_whitespace()
                        .any(|m| m.as_bytes() == c.code),
                    "{} lists {n} but not the reverse",
                    c.code_str()
                );
                assert_ne!(other.code, c.code);
            }
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_rejects_junk() {
        assert_eq!(lookup("de").map(Country::code_str), Some("DE"));
        assert_eq!(lookup("De").map(Country::code_str), Some("DE"));
        for junk in ["", "D", "DEU", "XX", "ZZ", "T1", "é", "\u{0}\u{0}"] {
            assert!(lookup(junk).is_none(), "{junk:?}");
        }
    }

    #[test]
    fn borders_are_land_borders_only() {
        let get = |c: &str| lookup(c).unwrap();
        assert!(get("DE").borders(get("FR")));
        assert!(get("FR").borders(get("DE")));
        assert!(get("US").borders(get("MX")));
        assert!(get("CL").borders(get("PE")));
        assert!(!get("DK").borders(get("SE")), "a bridge, not a land border");
        assert!(!get("DE").borders(get("AU")));
        assert!(!get("DE").borders(get("DE")));
    }

    #[test]
    fn haversine_matches_known_distances() {
        // Paris to London: 343.5 km.
        let d = haversine_km(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343.5).abs() < 2.0, "{d}");
        // A quarter of the equator.
        let d = haversine_km(0.0, 0.0, 0.0, 90.0);
        assert!((d - 10_007.5).abs() < 1.0, "{d}");
        // Antipodes: half the circumference, no NaN from rounding.
        let d = haversine_km(0.0, 0.0, 0.0, 180.0);
        assert!((d - 20_015.1).abs() < 1.0, "{d}");
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // Across the antimeridian: Fiji to Samoa is about 1,150 km, not 40,000.
        let (fj, ws) = (lookup("FJ").unwrap(), lookup("WS").unwrap());
        let d = haversine_km(fj.lat, fj.lon, ws.lat, ws.lon);
        assert!((900.0..1400.0).contains(&d), "{d}");
    }
}
